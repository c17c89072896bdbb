"""docker-compose.yml runs what the e2e tests run natively, and it validates.

The commands and setting names come from one table (tests/fixtures/airflow_stack.py); these
tests fail when docker-compose.yml, .env.example or the native stack drift apart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.airflow_stack import (
    APPROVALS_SETTINGS,
    CELERY_SETTINGS,
    COMPONENTS,
    DEPLOYMENT_SETTINGS,
    FAST_SETTINGS,
    MLFLOW_SERVER_OPTIONS,
    MOUNTED_APPROVALS_SETTINGS,
    NATIVE_ONLY_SETTINGS,
    REPO_ROOT,
    StackConfig,
    stack_environment,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERFILE = REPO_ROOT / "Dockerfile"
ONE_SHOT = {"airflow-init", "postgres-init", "approvals-migrate"}
# The approvals service logs in as this role, which owns nothing (docs/deployment.md, "Database roles").
APPROVALS_APP_ROLE = "hlml_approvals_app"
# Set by the compose file for the container runtime, not Airflow settings.
CONTAINER_ONLY = {"DUMB_INIT_SETSID"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def _native_env(executor: str, tmp_path: Path, *, mounted: bool = False) -> dict[str, str]:
    return stack_environment(
        home=tmp_path,
        dags_folder=tmp_path / "dags",
        sql_alchemy_conn=f"sqlite:///{tmp_path / 'airflow.db'}",
        api_url="http://127.0.0.1:8080",
        executor=executor,
        config=StackConfig(
            mlflow_url="http://127.0.0.1:5000",
            approvals_base_url="" if mounted else "http://127.0.0.1:8000/humanlayer/v1",
            agent_key="agent-key",
            delegate_key="delegate-key",
            mounted_approvals_db=f"sqlite:///{tmp_path / 'approvals.db'}" if mounted else "",
        ),
    )


def _env_names(service: dict[str, Any]) -> set[str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {item.split("=", 1)[0] for item in env}
    return set(env)


class TestComposeMatchesNativeStack:
    def test_every_component_runs_the_native_command(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        for name, component in COMPONENTS.items():
            assert component.service in services, f"{component.service} ({name}) missing"
            expected = component.command(host="0.0.0.0", port="8000")
            assert services[component.service]["command"] == expected, component.service

    def test_airflow_services_get_exactly_the_deployment_settings(
        self, compose: dict[str, Any], tmp_path: Path
    ) -> None:
        services = compose["services"]
        expected = set(DEPLOYMENT_SETTINGS) | set(CELERY_SETTINGS)
        airflow_services = [c.service for c in COMPONENTS.values() if c.airflow] + ["airflow-init"]
        for name in airflow_services:
            extra = (
                {"AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_REVIEWER_PASSWORD"} if name == "airflow-init" else set()
            )
            assert _env_names(services[name]) - CONTAINER_ONLY == expected | extra, name

        # The native stack sets the same names, plus only what one shared host and fast tests need.
        native_only = set(NATIVE_ONLY_SETTINGS) | set(FAST_SETTINGS)
        for executor, names in (
            ("LocalExecutor", set(DEPLOYMENT_SETTINGS)),
            ("CeleryExecutor", set(DEPLOYMENT_SETTINGS) | set(CELERY_SETTINGS)),
        ):
            native = set(_native_env(executor, tmp_path))
            assert native - native_only == names, executor
        mounted = set(_native_env("LocalExecutor", tmp_path, mounted=True))
        assert mounted - native_only == set(DEPLOYMENT_SETTINGS) | set(MOUNTED_APPROVALS_SETTINGS)

    def test_every_airflow_setting_is_a_real_option(self, compose: dict[str, Any], tmp_path: Path) -> None:
        from airflow.configuration import conf

        from airflow_provider_hlml.get_provider_info import get_provider_info

        hlml_options = set(get_provider_info()["config"]["hlml"]["options"])
        # Airflow's own options plus those of the installed providers (celery).
        described = conf.configuration_description
        names = set(_native_env("CeleryExecutor", tmp_path, mounted=True)) | _env_names(
            compose["services"]["airflow-scheduler"]
        )
        for name in sorted(n for n in names if n.startswith("AIRFLOW__")):
            section, option = (part.lower() for part in name[len("AIRFLOW__") :].split("__", 1))
            if section == "hlml":
                assert option in hlml_options, f"{name}: no [hlml] {option} in get_provider_info()"
            else:
                options = described.get(section, {}).get("options", {})
                assert option in options, f"{name}: Airflow has no [{section}] {option}"

    def test_approvals_and_mlflow_services(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        assert _env_names(services["humanlayer"]) == set(APPROVALS_SETTINGS)
        assert "8000:8000" in services["humanlayer"]["ports"][0].replace("${HUMANLAYER_PORT:-8000}", "8000")
        mlflow_command = services["mlflow"]["command"]
        assert mlflow_command[:2] == ["mlflow", "server"]
        assert set(MLFLOW_SERVER_OPTIONS) <= set(mlflow_command)
        backend = mlflow_command[mlflow_command.index("--backend-store-uri") + 1]
        assert backend.startswith("postgresql://"), "MLflow must use the PostgreSQL backend"
        artifacts = mlflow_command[mlflow_command.index("--artifacts-destination") + 1]
        assert any(v.endswith(f":{artifacts}") for v in services["mlflow"]["volumes"]), "artifact volume"

    def test_two_approvals_replicas_behind_one_name(self, compose: dict[str, Any]) -> None:
        """Two replicas of one service on one database, reached by the Airflow side as
        ``approvals`` (both carry the alias), each pushing decisions to the API server."""
        services = compose["services"]
        first, second = services["humanlayer"], services["humanlayer-2"]
        assert first["environment"] == second["environment"]
        assert (
            first["command"]
            == second["command"]
            == ["hlml-approvals", "serve", "--host", "0.0.0.0", "--port", "8000"]
        )
        for replica in (first, second):
            assert "approvals" in replica["networks"]["default"]["aliases"]
            assert replica["environment"]["HLML_APPROVALS_WEBHOOK_URLS"].endswith(
                "//airflow-apiserver:8080/hlml/webhooks/humanlayer}"
            )
        assert "ports" not in second  # reviewers reach the first one
        conn = services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_HUMANLAYER_DEFAULT"]
        assert "http://approvals:8000/humanlayer/v1" in conn
        depends = services["airflow-scheduler"]["depends_on"]
        assert depends["humanlayer"]["condition"] == depends["humanlayer-2"]["condition"] == "service_healthy"

    def test_approvals_service_runs_as_a_role_that_owns_nothing(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        serve_url = services["humanlayer"]["environment"]["HLML_APPROVALS_DATABASE_URL"]
        migrate_url = services["approvals-migrate"]["environment"]["HLML_APPROVALS_DATABASE_URL"]
        assert serve_url.startswith(f"postgresql://{APPROVALS_APP_ROLE}@postgres/")
        assert "POSTGRES_PASSWORD" not in serve_url, "the service must not know the owner's password"
        assert migrate_url.startswith("postgresql://${POSTGRES_USER:-airflow}:")
        # The owner migrates and grants; the service waits for it; postgres-init makes the role.
        script = services["approvals-migrate"]["command"][-1]
        assert script == f"hlml-approvals migrate && hlml-approvals db grant {APPROVALS_APP_ROLE}"
        assert "approvals-migrate" in services["humanlayer"]["depends_on"]
        assert "postgres-init" in services["approvals-migrate"]["depends_on"]
        init = services["postgres-init"]["command"][-1]
        assert f"CREATE ROLE {APPROVALS_APP_ROLE}" in init
        passfile = serve_url.split("passfile=", 1)[1]
        assert f"pgpass={passfile}" in init
        mounts = [v.split(":")[1] for v in services["humanlayer"]["volumes"]]
        assert passfile.rsplit("/", 1)[0] in mounts

    def test_long_running_services_have_health_checks(self, compose: dict[str, Any]) -> None:
        for name, service in compose["services"].items():
            if name in ONE_SHOT:
                continue
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"

    def test_env_example_documents_every_variable(self, compose: dict[str, Any]) -> None:
        text = COMPOSE_FILE.read_text()
        used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
        documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
        assert used - documented == set(), "variables used by docker-compose.yml but not in .env.example"
        assert documented - used == set(), "variables in .env.example that docker-compose.yml never reads"

    def test_image_installs_this_package(self) -> None:
        text = DOCKERFILE.read_text()
        assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}", text, flags=re.M)
        assert "pip install" in text
        assert "/opt/hlml[" in text


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


class TestComposeConfig:
    """``docker compose config`` parses, interpolates and validates the file; it needs no engine."""

    @pytest.fixture
    def compose_cli(self) -> list[str]:
        command = _compose_command()
        if command is None:
            pytest.skip("neither the `docker compose` plugin nor `docker-compose` is installed")
        return command

    def _run(self, compose_cli: list[str], env_file: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HLML_", "POSTGRES_"))}
        return subprocess.run(
            [*compose_cli, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=120,
            check=False,
        )

    def test_validates_with_the_documented_settings(self, compose_cli: list[str], tmp_path: Path) -> None:
        env_file = tmp_path / ".env"
        env_file.write_text(
            ENV_EXAMPLE.read_text().replace("AIRFLOW_JWT_SECRET=\n", "AIRFLOW_JWT_SECRET=test-secret\n")
        )
        result = self._run(compose_cli, env_file)
        assert result.returncode == 0, result.stderr
        resolved = yaml.safe_load(result.stdout)
        env = resolved["services"]["airflow-scheduler"]["environment"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "test-secret"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
            "postgresql+psycopg2://airflow:change-me-postgres@postgres/airflow"
        )

    def test_refuses_to_start_without_a_jwt_secret(self, compose_cli: list[str]) -> None:
        result = self._run(compose_cli, ENV_EXAMPLE)
        assert result.returncode != 0
        assert "AIRFLOW_JWT_SECRET" in result.stderr
