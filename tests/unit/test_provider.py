"""The package as Airflow sees it: provider metadata, connection types, config, lazy imports."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_hlml.get_provider_info import get_provider_info

HEAVY = ("mlflow", "sklearn", "fastapi", "sqlalchemy", "humanlayer")
AIRFLOW = str(Path(sys.executable).parent / "airflow")

# Modules Airflow loads while parsing DAG files: everything but the server-side packages.
IMPORT_ALL_PUBLIC = """
import importlib, json, pkgutil, sys
import airflow.sdk
# What Airflow's own SDK loads (it imports sqlalchemy itself) is no cost of this provider.
baseline = {m.split(".")[0] for m in sys.modules}
import airflow_provider_hlml as p
skip = ("airflow_provider_hlml.approvals", "airflow_provider_hlml.plugins")
names = [m.name for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".") if not m.name.startswith(skip)]
for name in names:
    importlib.import_module(name)
heavy = sorted(({m.split(".")[0] for m in sys.modules} - baseline) & set(json.loads(sys.argv[1])))
print(json.dumps({"modules": names, "heavy": heavy}))
"""


def _json_out(stdout: str):
    """Parse the JSON document in a CLI's stdout, past any log lines printed before it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(("[", "{")))
    return json.loads("\n".join(lines[start:]))


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


class TestProviderInfo:
    def test_package_name_is_the_distribution_name(self):
        info = get_provider_info()
        assert info["package-name"] == "airflow-provider-hlml"
        assert importlib.metadata.version(info["package-name"]) == info["versions"][0]

    def test_entry_point_points_at_get_provider_info(self):
        eps = importlib.metadata.entry_points(group="apache_airflow_provider")
        values = {ep.value for ep in eps if ep.dist and ep.dist.name == "airflow-provider-hlml"}
        assert values == {"airflow_provider_hlml.get_provider_info:get_provider_info"}

    def test_every_declared_class_and_module_is_importable(self):
        info = get_provider_info()
        modules = [
            m
            for key in ("hooks", "operators", "sensors", "triggers")
            for e in info[key]
            for m in e["python-modules"]
        ]
        classes = [*info["extra-links"], *(c["hook-class-name"] for c in info["connection-types"])]
        classes += [d["class-name"] for d in info["task-decorators"]]
        for module in modules:
            importlib.import_module(module)
        for path in classes:
            module, _, name = path.rpartition(".")
            assert hasattr(importlib.import_module(module), name), path

    def test_secret_fields_are_password_fields(self):
        by_type = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
        assert set(by_type) == {"humanlayer", "mlflow"}
        assert by_type["mlflow"]["conn-fields"]["token"]["schema"]["format"] == "password"
        assert by_type["humanlayer"]["ui-field-behaviour"]["relabeling"]["password"] == "API key"


class TestLazyImports:
    def test_public_modules_import_no_heavy_package(self):
        result = _run([sys.executable, "-c", IMPORT_ALL_PUBLIC, json.dumps(HEAVY)])
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert "airflow_provider_hlml.hooks.mlflow" in report["modules"]
        assert report["heavy"] == [], f"heavy modules loaded at import time: {report['heavy']}"

    def test_package_import_resolves_names_lazily(self):
        code = (
            "import sys, airflow_provider_hlml as p\n"
            "assert 'airflow_provider_hlml.operators.train' not in sys.modules\n"
            "assert p.MLflowTrainOperator.__name__ == 'MLflowTrainOperator'\n"
            "assert 'airflow_provider_hlml.operators.train' in sys.modules\n"
        )
        result = _run([sys.executable, "-c", code])
        assert result.returncode == 0, result.stderr[-3000:]

    def test_unknown_attribute_raises_attribute_error(self):
        import airflow_provider_hlml

        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            _ = airflow_provider_hlml.Nope


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path_factory.mktemp("cli-home"))}
    return env


class TestAirflowCli:
    def test_providers_list_shows_the_provider(self, cli_env):
        result = _run([AIRFLOW, "providers", "list", "-o", "json"], cli_env)
        assert result.returncode == 0, result.stderr[-3000:]
        packages = {p["package_name"]: p for p in _json_out(result.stdout)}
        assert packages["airflow-provider-hlml"]["version"] == get_provider_info()["versions"][0]

    def test_providers_hooks_shows_both_connection_types(self, cli_env):
        result = _run([AIRFLOW, "providers", "hooks", "-o", "json"], cli_env)
        assert result.returncode == 0, result.stderr[-3000:]
        hooks = {h["connection_type"]: h for h in _json_out(result.stdout)}
        assert hooks["humanlayer"]["class"] == "airflow_provider_hlml.hooks.humanlayer.HumanLayerHook"
        assert hooks["mlflow"]["class"] == "airflow_provider_hlml.hooks.mlflow.MLflowHook"
        assert hooks["humanlayer"]["package_name"] == "airflow-provider-hlml"
        assert hooks["mlflow"]["conn_id_attribute_name"] == "mlflow_conn_id"

    def test_connection_form_fields_are_registered(self, cli_env):
        code = (
            "import json\n"
            "from airflow.providers_manager import ProvidersManager\n"
            "pm = ProvidersManager()\n"
            "w = pm.connection_form_widgets\n"
            "b = pm.field_behaviours\n"
            "print(json.dumps({'widgets': sorted(k for k in w if '__humanlayer__' in k or '__mlflow__' in k),"
            " 'sensitive': sorted(k for k, v in w.items() if v.is_sensitive),"
            " 'hidden': {t: b[t]['hidden_fields'] for t in ('humanlayer', 'mlflow')}}))\n"
        )
        result = _run([sys.executable, "-c", code], cli_env)
        assert result.returncode == 0, result.stderr[-3000:]
        data = json.loads(result.stdout.strip().splitlines()[-1])
        assert data["widgets"] == [
            "extra__humanlayer__run_id_prefix",
            "extra__humanlayer__timeout",
            "extra__mlflow__max_retries",
            "extra__mlflow__registry_uri",
            "extra__mlflow__timeout",
            "extra__mlflow__token",
            "extra__mlflow__ui_url",
        ]
        assert "extra__mlflow__token" in data["sensitive"]
        assert "extra" in data["hidden"]["humanlayer"]
        assert "login" in data["hidden"]["humanlayer"]

    def test_config_section_defaults(self, cli_env):
        result = _run([AIRFLOW, "config", "get-value", "hlml", "humanlayer_conn_id"], cli_env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip().splitlines()[-1] == "humanlayer_default"
