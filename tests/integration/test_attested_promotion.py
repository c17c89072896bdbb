"""A promotion carries the service's signed attestation, and whoever serves the model verifies it.

train -> validate -> HumanApprovalSensor -> ModelPromoteOperator(require_attestation=True) with
``dag.test()``, a real ``mlflow server``, the real approvals service over HTTP; then
``hlml-approvals verify-model`` and the Airflow-free one-liner against the alias, before and after
someone moves it by hand.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from typing import Any

import pytest
from click.testing import CliRunner

from airflow_provider_hlml import audit
from airflow_provider_hlml.approvals.cli import main as approvals_cli
from airflow_provider_hlml.gate.attestation import KEYS_PATH
from airflow_provider_hlml.hooks.mlflow import MLflowHook
from tests.fixtures.processes import VENV_BIN
from tests.integration.test_governance_promotion import _pipeline, _reviewers, env
from tests.unit.operators.dagrun_helpers import run_dag, task_states, xcom_value

pytestmark = pytest.mark.integration

__all__ = ["env"]  # the fixture, shared with the governance tests


def _promote_kwargs(dag: Any, **kwargs: Any) -> None:
    promote = dag.get_task("promote")
    for name, value in kwargs.items():
        setattr(promote, name, value)


def verify_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(approvals_cli, ["verify-model", *args])
    return result.exit_code, result.output


def one_liner(tracking_uri: str, keys_url: str, ref: str) -> subprocess.CompletedProcess[str]:
    """``python -m airflow_provider_hlml.verify`` in a fresh interpreter, which must not import Airflow."""
    code = (
        "import sys\n"
        "from airflow_provider_hlml.verify import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert not any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules), 'imported Airflow'\n"
        "sys.exit(rc)\n"
    )
    return subprocess.run(
        [str(VENV_BIN / "python"), "-c", code, ref, "--tracking-uri", tracking_uri, "--keys-url", keys_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestAttestedPromotion:
    def test_promoted_version_verifies_and_a_hand_set_alias_does_not(
        self, env: Any, mlflow_conn: str
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        dag_id, model_name = f"attested_promotion_{suffix}", f"churn_attested_{suffix}"
        dag = _pipeline(dag_id, model_name)
        _promote_kwargs(dag, require_attestation=True)
        thread, answered = _reviewers(env, dag_id, [env.reviewer_key])
        dag_run = run_dag(dag)
        thread.join(30)
        assert task_states(dag_run)["promote"] == "success"
        assert len(answered) == 1
        report, decision = xcom_value(dag_run, "validate"), xcom_value(dag_run, "approve")
        hook = MLflowHook(mlflow_conn)
        client = hook.client
        champion = client.get_model_version_by_alias(model_name, "champion")
        assert champion.version == report["model_version"]
        envelope = json.loads(champion.tags[audit.ATTESTATION])
        statement = json.loads(base64.b64decode(envelope["payload"]))
        assert statement["call_id"] == decision["call_id"]
        assert statement["decision"] == "approved"
        assert statement["model"]["version"] == champion.version
        assert statement["model"]["run_id"] == champion.run_id
        assert statement["approvers"][0]["email"] == "alice@example.com"
        assert champion.tags[audit.ATTESTATION_KEY_ID] == envelope["signatures"][0]["keyid"]

        tracking_uri = client._tracking_client.tracking_uri
        keys_url = env.base_url + KEYS_PATH
        code, out = verify_cli(
            f"{model_name}@champion", "--tracking-uri", tracking_uri, "--keys-url", keys_url
        )
        assert code == 0, out
        assert f"verified: {model_name} v{champion.version} (@champion) was approved by alice" in out
        done = one_liner(tracking_uri, keys_url, f"{model_name}@champion")
        assert done.returncode == 0, done.stderr
        assert "verified:" in done.stdout

        # Someone registers the same model again and moves @champion by hand.
        import mlflow

        with hook.fluent():
            manual = mlflow.register_model(champion.source, model_name)
        client.set_registered_model_alias(model_name, "champion", manual.version)
        code, out = verify_cli(
            f"{model_name}@champion", "--tracking-uri", tracking_uri, "--keys-url", keys_url
        )
        assert code == 1
        assert (
            f"NOT verified: {model_name} v{manual.version} (@champion) carries no approval attestation" in out
        )
        done = one_liner(tracking_uri, keys_url, f"{model_name}@champion")
        assert done.returncode == 1
        assert "carries no approval attestation" in done.stderr
        # ... and copies the approved version's attestation onto it: it names another version.
        client.set_model_version_tag(
            model_name, manual.version, audit.ATTESTATION, champion.tags[audit.ATTESTATION]
        )
        code, out = verify_cli(
            f"{model_name}@champion", "--tracking-uri", tracking_uri, "--keys-url", keys_url, "--json"
        )
        assert code == 1
        verdict = json.loads(out)
        assert verdict["ok"] is False
        assert f"names version '{champion.version}', not '{manual.version}'" in verdict["reason"]

        # A key pinned by the serving side that did not sign it: refused, whatever the service says.
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        other = (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        client.set_registered_model_alias(model_name, "champion", champion.version)
        code, out = verify_cli(
            f"{model_name}@champion",
            "--tracking-uri",
            tracking_uri,
            "--public-key",
            base64.b64encode(other).decode(),
        )
        assert code == 1
        assert "not among the trusted keys" in out

    def test_require_attestation_refuses_a_decision_no_trusted_key_signed(
        self, env: Any, mlflow_conn: str
    ) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        pinned = (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        suffix = uuid.uuid4().hex[:8]
        dag_id, model_name = f"unattested_promotion_{suffix}", f"churn_unattested_{suffix}"
        dag = _pipeline(dag_id, model_name)
        _promote_kwargs(dag, require_attestation=True, attestation_public_key=pinned.decode())
        thread, _ = _reviewers(env, dag_id, [env.reviewer_key])
        dag_run = run_dag(dag)
        thread.join(30)
        assert task_states(dag_run)["approve"] == "success"
        assert task_states(dag_run)["promote"] == "failed"
        client = MLflowHook(mlflow_conn).client
        assert client.get_registered_model(model_name).aliases == {}


def test_require_attestation_needs_the_gate() -> None:
    from airflow_provider_hlml.operators.promote import ModelPromoteOperator

    with pytest.raises(ValueError, match="needs approval_task_id"):
        ModelPromoteOperator(task_id="p", model_name="m", require_attestation=True)
