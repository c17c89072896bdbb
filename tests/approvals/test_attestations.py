"""Signed approval attestations: signed when decided, verified with the published keys, refused
after any change, for another version, and once their key is revoked."""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from airflow_provider_hlml.approvals import db, store
from airflow_provider_hlml.approvals.attest import keys as signing
from airflow_provider_hlml.approvals.models import ApprovalRequest, SigningKey
from airflow_provider_hlml.gate.attestation import (
    KEYS_PATH,
    WELL_KNOWN_KEYS_PATH,
    AttestationError,
    KeySet,
    check_names_model,
    public_key_from_text,
    verify_envelope,
)
from tests.approvals.conftest import Api, call_body, new_call_id, policy_state
from tests.approvals.test_cli import key, run
from tests.fixtures.approvals import ApprovalsService

MODEL_CONTEXT = {
    "model_name": "churn",
    "model_version": "3",
    "mlflow_run_id": "abc123",
    "model_uri": "models:/m-0123456789",
}


@pytest.fixture
def database_url() -> Iterator[str]:
    url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='hlml-attest-')) / 'a.db'}"
    run("migrate", "--database-url", url)
    signing.configure_key_file(None)
    yield url
    signing.configure_key_file(None)


def model_call(database_url: str, context: dict[str, Any] | None = None) -> str:
    """A pending request from the agent ``pipeline`` about the model version in ``context``."""
    body = call_body(new_call_id("attest"), state=policy_state())
    body["spec"]["kwargs"]["context"] = context or MODEL_CONTEXT
    engine = db.make_engine(database_url, pool_size=1)
    with db.make_sessionmaker(engine)() as session:
        agent = store.authenticate(session, key=key(database_url, "agent", "pipeline"))
        assert agent is not None
        store.create_request(
            session,
            kind=store.FUNCTION_CALL,
            run_id=body["run_id"],
            call_id=body["call_id"],
            spec=body["spec"],
            actor=agent,
        )
    engine.dispose()
    return str(body["call_id"])


def attestation_of(database_url: str, call_id: str) -> str:
    engine = db.make_engine(database_url, pool_size=1)
    with db.make_sessionmaker(engine)() as session:
        row = session.scalar(select(ApprovalRequest).where(ApprovalRequest.call_id == call_id))
        assert row is not None
        envelope = row.attestation
    engine.dispose()
    assert isinstance(envelope, str)
    return envelope


def published_keys(database_url: str) -> KeySet:
    return KeySet.from_document(
        json.loads(run("signing-keys", "list", "--json", "--database-url", database_url).output)
    )


def tamper_payload(envelope: str, change: Any) -> str:
    data = json.loads(envelope)
    statement = json.loads(base64.b64decode(data["payload"]))
    change(statement)
    data["payload"] = base64.b64encode(
        json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    ).decode()
    return json.dumps(data)


class TestSignedDecisions:
    def test_an_approval_is_signed_and_verifies(self, database_url: str) -> None:
        call_id = model_call(database_url)
        run("approve", call_id, "--comment", "ship it", "--database-url", database_url)
        statement = verify_envelope(attestation_of(database_url, call_id), published_keys(database_url))
        assert statement.decision == "approved"
        assert statement.call_id == call_id
        assert statement.approvers == ["cli-admin"]
        assert statement.model == {
            "name": "churn",
            "version": "3",
            "run_id": "abc123",
            "source": "models:/m-0123456789",
        }
        assert statement.data["requester"]["principal"] == "pipeline"
        assert statement.data["airflow"] == {"dag_id": "d", "run_id": "r", "task_id": "t"}
        assert len(statement.data["spec_hash"]) == 64
        assert statement.data["audit"]["seq"] is not None
        check_names_model(
            statement, name="churn", version="3", run_id="abc123", source="models:/m-0123456789"
        )

    def test_a_rejection_is_signed_but_allows_no_promotion(self, database_url: str) -> None:
        call_id = model_call(database_url)
        run("reject", call_id, "--comment", "no", "--database-url", database_url)
        statement = verify_envelope(attestation_of(database_url, call_id), published_keys(database_url))
        assert statement.decision == "rejected"
        with pytest.raises(AttestationError, match="'rejected' decision"):
            check_names_model(statement, name="churn", version="3", run_id="abc123", source=None)

    def test_one_changed_byte_is_refused(self, database_url: str) -> None:
        call_id = model_call(database_url)
        run("approve", call_id, "--database-url", database_url)
        envelope, keys = attestation_of(database_url, call_id), published_keys(database_url)
        forged = tamper_payload(envelope, lambda s: s["model"].update(version="4"))
        with pytest.raises(AttestationError, match="does not verify"):
            verify_envelope(forged, keys)
        data = json.loads(envelope)
        sig = bytearray(base64.b64decode(data["signatures"][0]["sig"]))
        sig[0] ^= 1
        data["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
        with pytest.raises(AttestationError, match="does not verify"):
            verify_envelope(json.dumps(data), keys)
        raw = bytearray(envelope.encode())
        raw[len(raw) // 2] ^= 1
        with pytest.raises(AttestationError):
            verify_envelope(bytes(raw), keys)

    def test_a_wrong_version_is_refused(self, database_url: str) -> None:
        call_id = model_call(database_url)
        run("approve", call_id, "--database-url", database_url)
        statement = verify_envelope(attestation_of(database_url, call_id), published_keys(database_url))
        with pytest.raises(AttestationError, match="names version '3', not '4'"):
            check_names_model(statement, name="churn", version="4", run_id="abc123", source=None)
        with pytest.raises(AttestationError, match="names source"):
            check_names_model(statement, name="churn", version="3", run_id="abc123", source="models:/m-other")
        # A statement whose source is the registry URI of exactly this version names its source.
        by_registry_uri = model_call(database_url, {**MODEL_CONTEXT, "model_uri": "models:/churn/3"})
        run("approve", by_registry_uri, "--database-url", database_url)
        statement = verify_envelope(
            attestation_of(database_url, by_registry_uri), published_keys(database_url)
        )
        check_names_model(
            statement, name="churn", version="3", run_id="abc123", source="models:/m-0123456789"
        )
        with pytest.raises(AttestationError, match="names version"):
            check_names_model(
                statement, name="churn", version="4", run_id="abc123", source="models:/m-0123456789"
            )

    def test_rotation_keeps_old_signatures_and_revocation_ends_them(self, database_url: str) -> None:
        first = model_call(database_url)
        run("approve", first, "--database-url", database_url)
        old_key = verify_envelope(attestation_of(database_url, first), published_keys(database_url)).key_id
        new_key = run("signing-keys", "rotate", "--database-url", database_url).output.split()[-1]
        assert new_key != old_key
        second = model_call(database_url)
        run("approve", second, "--database-url", database_url)
        keys = published_keys(database_url)
        assert keys.keys[old_key].status == "retired"
        assert verify_envelope(attestation_of(database_url, first), keys).key_id == old_key
        assert verify_envelope(attestation_of(database_url, second), keys).key_id == new_key
        # A verifier pinned to the new key trusts nothing the old key signed.
        pinned = KeySet.pinned(keys.keys[new_key])
        with pytest.raises(AttestationError, match="not among the trusted keys"):
            verify_envelope(attestation_of(database_url, first), pinned)
        run("signing-keys", "revoke", old_key, "--database-url", database_url)
        with pytest.raises(AttestationError, match="revoked"):
            verify_envelope(attestation_of(database_url, first), published_keys(database_url))
        engine = db.make_engine(database_url, pool_size=1)
        with db.make_sessionmaker(engine)() as session:
            revoked = session.scalar(select(SigningKey).where(SigningKey.key_id == old_key))
            assert revoked is not None
            assert revoked.private_key is None
        engine.dispose()

    def test_a_statement_signed_with_a_retired_key_after_retirement_is_refused(
        self, database_url: str
    ) -> None:
        call_id = model_call(database_url)
        run("approve", call_id, "--database-url", database_url)
        envelope = attestation_of(database_url, call_id)
        keys = published_keys(database_url)
        key_id = next(iter(keys.keys))
        retired = KeySet.pinned(
            type(keys.keys[key_id])(
                key_id, keys.keys[key_id].public_raw, "retired", retired_at="2000-01-01T00:00:00.000000+00:00"
            )
        )
        with pytest.raises(AttestationError, match="after it was retired"):
            verify_envelope(envelope, retired)

    def test_key_file_signs_and_its_private_half_is_never_stored(
        self, database_url: str, tmp_path: Path
    ) -> None:
        path = str(tmp_path / "signing.pem")
        key_id = run("signing-keys", "new-file", path).output.split()[2]
        assert oct(Path(path).stat().st_mode & 0o777) == "0o600"
        signing.configure_key_file(path)
        call_id = model_call(database_url)
        run("approve", call_id, "--database-url", database_url)
        assert (
            verify_envelope(attestation_of(database_url, call_id), published_keys(database_url)).key_id
            == key_id
        )
        dump = "\n".join(
            str(r)
            for r in db.make_engine(database_url, pool_size=1)
            .connect()
            .exec_driver_sql("SELECT * FROM signing_keys")
        )
        pem_body = "".join(Path(path).read_text().splitlines()[1:-1])
        assert pem_body[-20:] not in dump
        assert "file" in dump

    def test_an_attestation_cannot_be_changed_in_the_database(self, database_url: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import DatabaseError

        call_id = model_call(database_url)
        run("approve", call_id, "--database-url", database_url)
        engine = db.make_engine(database_url, pool_size=1)
        try:
            for value in ("'{}'", "NULL"):
                with (
                    pytest.raises(DatabaseError, match="attestation of a decision never changes"),
                    engine.begin() as conn,
                ):
                    conn.execute(
                        text(f"UPDATE approval_requests SET attestation = {value} WHERE call_id = :c"),
                        {"c": call_id},
                    )
        finally:
            engine.dispose()
        verify_envelope(attestation_of(database_url, call_id), published_keys(database_url))

    def test_pinned_key_from_pem_or_base64(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        public = Ed25519PrivateKey.generate().public_key()
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert public_key_from_text(pem.decode()).public_raw == raw
        assert public_key_from_text(base64.b64encode(raw).decode()).public_raw == raw
        with pytest.raises(AttestationError):
            public_key_from_text("bm90IGEga2V5")

    def test_hostile_envelopes_are_refused_not_crashed(self) -> None:
        keys = KeySet()
        for envelope in ("", "x" * 9000, "[]", '{"payloadType": "text/plain"}', '{"payloadType": "application/vnd.hlml.approval+json", "signatures": []}',
                         '{"payloadType": "application/vnd.hlml.approval+json", "payload": "%%%", "signatures": [{"keyid": "k", "sig": "x"}]}'):  # fmt: skip
            with pytest.raises(AttestationError):
                verify_envelope(envelope, keys)
        with pytest.raises(AttestationError):
            KeySet.from_document({"keys": "nope"})
        # A listed key whose id is not its own is not trusted (it cannot stand in for another).
        doc = {
            "keys": [
                {
                    "keyid": "someone-else",
                    "algorithm": "Ed25519",
                    "public_key": base64.b64encode(b"k" * 32).decode(),
                    "status": "active",
                }
            ]
        }
        assert KeySet.from_document(doc).keys == {}


class TestRoutes:
    def test_keys_are_public_and_attestations_need_a_key(
        self, approvals_service: ApprovalsService, as_agent: Api, as_alice: Api
    ) -> None:
        keys = httpx.get(approvals_service.base_url + KEYS_PATH, timeout=30)
        assert keys.status_code == 200
        assert keys.json()["keys"][0]["status"] == "active"
        well_known = httpx.get(approvals_service.root_url + WELL_KNOWN_KEYS_PATH, timeout=30)
        assert well_known.json()["keys"] == keys.json()["keys"]
        body = call_body(new_call_id("attest"), state=policy_state())
        body["spec"]["kwargs"]["context"] = MODEL_CONTEXT
        assert as_agent.post("/function_calls", json=body).status_code == 201
        path = f"/function_calls/{body['call_id']}/attestation"
        assert as_agent.get(path).json()["attestation"] is None
        assert httpx.get(approvals_service.base_url + path, timeout=30).status_code == 401
        assert (
            as_alice.post(
                f"/agent/function_calls/{body['call_id']}/respond", json={"approved": True}
            ).status_code
            == 200
        )
        envelope = as_agent.get(path).json()["attestation"]
        statement = verify_envelope(envelope, KeySet.from_document(keys.json()))
        assert statement.model["version"] == "3"
        assert as_agent.get("/function_calls/nope/attestation").status_code == 404
