"""Signed approval attestations: what the approvals service signs when a request is decided, and
how anyone checks it (no Airflow, no database, no service: a statement, a signature and the
service's public keys).

An attestation is a `DSSE <https://github.com/secure-systems-lab/dsse>`_ envelope (the format of
in-toto and Sigstore) around a compact JSON statement, signed with Ed25519::

    {"payloadType": "application/vnd.hlml.approval+json",
     "payload": "<base64 of the statement>",
     "signatures": [{"keyid": "<key id>", "sig": "<base64 Ed25519 signature>"}]}

The signature covers DSSE's pre-authentication encoding of the payload type and the payload
bytes, so neither can be swapped. The statement (:class:`Statement`) names the request (call id,
run id, the digest of its spec and of what the reviewers were shown), the decision, who decided
under which rule, who asked, when, the audit-chain event that recorded the decision and, for a
model promotion, the model version: name, version, run id and source.

The service publishes its keys as a :data:`KEYS_PATH` document (:class:`KeySet`). A key is
``active`` (signing now), ``retired`` (rotated out of signing: what it signed before stays valid)
or ``revoked`` (compromised or withdrawn: nothing it signed is trusted any more). A verifier can
also pin one public key and trust nothing else.

``cryptography`` is imported inside the functions that need it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KEYS_PATH",
    "MAX_ENVELOPE_BYTES",
    "PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "WELL_KNOWN_KEYS_PATH",
    "AttestationError",
    "KeySet",
    "PublicKey",
    "Statement",
    "check_names_model",
    "encode_statement",
    "key_id_of",
    "pae",
    "parse_envelope",
    "public_key_from_text",
    "sign_statement",
    "verify_envelope",
]

PAYLOAD_TYPE = "application/vnd.hlml.approval+json"
STATEMENT_TYPE = "hlml.approval/v1"
#: The service's public keys, under the service's API prefix (``/humanlayer/v1/attestation/keys``).
KEYS_PATH = "/attestation/keys"
#: The same document at the service's root, where a standalone service also serves it.
WELL_KNOWN_KEYS_PATH = "/.well-known/hlml-attestation-keys"
#: An attestation larger than this is refused unread (an MLflow tag holds at most 8,000 characters).
MAX_ENVELOPE_BYTES = 8000
KEY_STATUSES = ("active", "retired", "revoked")


class AttestationError(ValueError):
    """An attestation that does not verify, or does not name what it is checked against; the
    message says why, in words a person deploying a model can act on."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise AttestationError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise AttestationError(f"{what} is not valid base64") from None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id_of(public_raw: bytes) -> str:
    """A key's id: the first 32 hex digits of the SHA-256 of its raw public bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:32]


def encode_statement(statement: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a statement: sorted keys, no spaces, UTF-8."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_statement(statement: Mapping[str, Any], *, private_raw: bytes, key_id: str) -> str:
    """The DSSE envelope (compact JSON) of ``statement`` signed with an Ed25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    payload = encode_statement(statement)
    signature = Ed25519PrivateKey.from_private_bytes(private_raw).sign(pae(PAYLOAD_TYPE, payload))
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": _b64(payload),
        "signatures": [{"keyid": key_id, "sig": _b64(signature)}],
    }
    return json.dumps(envelope, separators=(",", ":"))


@dataclass(frozen=True)
class PublicKey:
    """One published key: its id, raw Ed25519 public bytes and status."""

    key_id: str
    public_raw: bytes
    status: str = "active"
    created_at: str | None = None
    retired_at: str | None = None
    revoked_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "keyid": self.key_id,
            "algorithm": "Ed25519",
            "public_key": _b64(self.public_raw),
            "status": self.status,
            "created_at": self.created_at,
            "retired_at": self.retired_at,
            "revoked_at": self.revoked_at,
        }


def public_key_from_text(text: str) -> PublicKey:
    """A pinned key from its base64 raw form (as the keys document lists it) or a PEM block."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            loaded = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise AttestationError(f"the pinned key is not a PEM public key: {exc}") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise AttestationError("the pinned key is not an Ed25519 key")
        raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = _unb64(text, "the pinned key")
    if len(raw) != 32:
        raise AttestationError("the pinned key is not a 32-byte Ed25519 public key")
    return PublicKey(key_id=key_id_of(raw), public_raw=raw)


@dataclass(frozen=True)
class KeySet:
    """The keys a verifier trusts, by key id (the service's published document, or one pinned key)."""

    keys: Mapping[str, PublicKey] = field(default_factory=dict)

    @classmethod
    def from_document(cls, document: Any) -> KeySet:
        """The keys of a :data:`KEYS_PATH` document; AttestationError if it is not one."""
        listed = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(listed, list):
            raise AttestationError("the keys document has no 'keys' list")
        keys: dict[str, PublicKey] = {}
        for item in listed:
            if not isinstance(item, Mapping) or item.get("algorithm") != "Ed25519":
                continue
            raw = _unb64(item.get("public_key"), "a published key")
            status = item.get("status")
            if len(raw) != 32 or status not in KEY_STATUSES or item.get("keyid") != key_id_of(raw):
                continue  # a malformed entry is not trusted (and cannot impersonate another key)
            keys[key_id_of(raw)] = PublicKey(
                key_id=key_id_of(raw),
                public_raw=raw,
                status=str(status),
                created_at=_text_or_none(item.get("created_at")),
                retired_at=_text_or_none(item.get("retired_at")),
                revoked_at=_text_or_none(item.get("revoked_at")),
            )
        return cls(keys)

    @classmethod
    def pinned(cls, *keys: PublicKey) -> KeySet:
        return cls({k.key_id: k for k in keys})

    def to_document(self) -> dict[str, Any]:
        return {"keys": [k.to_json() for k in self.keys.values()]}


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Statement:
    """A verified statement, with the key that signed it."""

    data: Mapping[str, Any]
    key_id: str

    @property
    def decision(self) -> str:
        return str(self.data.get("decision"))

    @property
    def call_id(self) -> str:
        return str(self.data.get("call_id"))

    @property
    def model(self) -> Mapping[str, Any]:
        model = self.data.get("model")
        return model if isinstance(model, Mapping) else {}

    @property
    def approvers(self) -> list[str]:
        return [str(a.get("name")) for a in self.data.get("approvers") or [] if isinstance(a, Mapping)]


def parse_envelope(envelope: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The envelope as a dict, checked for shape (bounded size, one known payload type)."""
    if isinstance(envelope, (str, bytes)):
        if len(envelope) > MAX_ENVELOPE_BYTES:
            raise AttestationError(f"the attestation is larger than {MAX_ENVELOPE_BYTES} bytes")
        try:
            envelope = json.loads(envelope)
        except (ValueError, UnicodeDecodeError):
            raise AttestationError("the attestation is not JSON (it was cut or changed)") from None
    if not isinstance(envelope, Mapping):
        raise AttestationError("the attestation is not a JSON object")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise AttestationError(f"the attestation's payload type is not {PAYLOAD_TYPE!r}")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise AttestationError("the attestation carries no signature")
    return dict(envelope)


def verify_envelope(envelope: str | bytes | Mapping[str, Any], keys: KeySet) -> Statement:
    """The statement of ``envelope`` once a trusted key's signature over it verifies.

    Refused (AttestationError, saying why): a malformed envelope, a signature by a key not in
    ``keys``, by a revoked key, by a retired key on a statement dated after its retirement, and a
    signature that does not verify (the statement or the signature changed).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    parsed = parse_envelope(envelope)
    payload = _unb64(parsed.get("payload"), "the attestation's payload")
    problems: list[str] = []
    for signature in parsed["signatures"]:
        if not isinstance(signature, Mapping):
            continue
        key_id = str(signature.get("keyid"))
        key = keys.keys.get(key_id)
        if key is None:
            problems.append(f"signed by key {key_id[:40]!r}, which is not among the trusted keys")
            continue
        if key.status == "revoked":
            problems.append(f"signed by key {key_id!r}, revoked at {key.revoked_at}")
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key.public_raw).verify(
                _unb64(signature.get("sig"), "a signature"), pae(PAYLOAD_TYPE, payload)
            )
        except InvalidSignature:
            problems.append(
                f"the signature by key {key_id!r} does not verify: the statement or the signature was changed"
            )
            continue
        data = _statement_data(payload)
        if key.status == "retired" and key.retired_at and str(data.get("decided_at")) > key.retired_at:
            problems.append(f"signed by key {key_id!r} after it was retired at {key.retired_at}")
            continue
        return Statement(data=data, key_id=key_id)
    raise AttestationError("; ".join(problems) or "the attestation carries no usable signature")


def _statement_data(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise AttestationError("the attested statement is not JSON") from None
    if not isinstance(data, dict) or data.get("type") != STATEMENT_TYPE:
        raise AttestationError(f"the attested statement is not an {STATEMENT_TYPE!r} statement")
    return data


def check_names_model(
    statement: Statement,
    *,
    name: str,
    version: str | int,
    run_id: str | None,
    source: str | None,
) -> None:
    """AttestationError unless ``statement`` attests an *approved* decision naming exactly this
    model version: its name, version, run id and source.

    A statement's source is the ``model_uri`` the reviewers were shown; it names this version when
    it is the version's own source (``models:/m-...`` in MLflow 3, or a run artifact URI) or the
    registry URI of exactly this version (``models:/<name>/<version>``).
    """
    if statement.decision != "approved":
        raise AttestationError(
            f"the attestation of request {statement.call_id!r} records a {statement.decision!r} decision"
        )
    model = statement.model
    if not model:
        raise AttestationError(f"the attestation of request {statement.call_id!r} names no model version")
    problems = []
    if str(model.get("name")) != str(name):
        problems.append(f"it names model {model.get('name')!r}, not {name!r}")
    if str(model.get("version")) != str(version):
        problems.append(f"it names version {model.get('version')!r}, not {str(version)!r}")
    if run_id is not None and str(model.get("run_id")) != str(run_id):
        problems.append(f"it names run {model.get('run_id')!r}, not {run_id!r}")
    attested_source = model.get("source")
    if (
        attested_source is not None
        and source is not None
        and str(attested_source) not in (str(source), f"models:/{name}/{version}")
    ):
        problems.append(f"it names source {attested_source!r}, not {source!r}")
    if problems:
        raise AttestationError(
            f"the attestation of request {statement.call_id!r} does not name {name} v{version}: "
            + "; ".join(problems)
        )


def iso(value: dt.datetime | None) -> str | None:
    """A timestamp as statements write it (UTC, ISO 8601, microseconds)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")
