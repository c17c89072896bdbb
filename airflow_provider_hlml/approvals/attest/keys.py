"""The Ed25519 keys the service signs decisions with.

Where the active key comes from, in order:

1. ``HLML_APPROVALS_SIGNING_KEY_FILE`` (``signing_key_file``): a PEM (PKCS#8) Ed25519 private key,
   for instance a mounted secret. The service records its public half (``source="file"``) and
   never writes the private half anywhere. Pointing the setting at a new file rotates: the
   previous key is retired.
2. Otherwise a key the service generated on first start and keeps in its database
   (``source="generated"``): the embedded default. Anyone who can read the database can sign
   with it; production should use a key file.

``hlml-approvals keys rotate`` retires the active key and makes a new one; ``keys revoke ID``
withdraws a key (what it signed no longer verifies). Every key ever used stays published with
its status (:data:`~airflow_provider_hlml.gate.attestation.KEYS_PATH`).
"""

from __future__ import annotations

import base64
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from airflow_provider_hlml.approvals.models import SigningKey, utcnow
from airflow_provider_hlml.gate.attestation import KeySet, PublicKey, iso, key_id_of

__all__ = [
    "KEY_FILE_ENV",
    "Signer",
    "active_signer",
    "configure_key_file",
    "key_set",
    "list_keys",
    "revoke",
    "rotate",
    "write_key_file",
]

KEY_FILE_ENV = "HLML_APPROVALS_SIGNING_KEY_FILE"

_lock = threading.Lock()
_configured_file: str | None = None
# Private keys read from files, by (path, mtime): a decision does not re-read the file.
_file_keys: dict[tuple[str, float], tuple[str, bytes, bytes]] = {}


@dataclass(frozen=True)
class Signer:
    key_id: str
    private_raw: bytes


def configure_key_file(path: str | None) -> None:
    """Use the key in ``path`` (the service's ``signing_key_file`` setting; "" or None = none)."""
    global _configured_file
    _configured_file = path or None


def _key_file() -> str | None:
    return _configured_file or os.environ.get(KEY_FILE_ENV) or None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _raw_pair(private_raw: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.from_private_bytes(private_raw).public_key()
    return private_raw, public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _generate() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return _raw_pair(private)


def _read_key_file(path: str) -> tuple[str, bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    mtime = Path(path).stat().st_mtime
    cached = _file_keys.get((path, mtime))
    if cached is not None:
        return cached
    try:
        loaded = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        # The message names the file, never its content.
        raise RuntimeError(
            f"signing key file {path}: not an unencrypted PEM private key ({type(exc).__name__})"
        ) from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise RuntimeError(f"signing key file {path}: not an Ed25519 key")
    private, public = _raw_pair(
        loaded.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    )
    entry = (key_id_of(public), private, public)
    _file_keys[(path, mtime)] = entry
    return entry


def write_key_file(path: str) -> str:
    """Write a new Ed25519 private key to ``path`` (PEM, PKCS#8, mode 0600); return its key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = _generate()
    pem = Ed25519PrivateKey.from_private_bytes(private).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key_id_of(public)


def _activate(session: Session, *, key_id: str, public: bytes, private: bytes | None, source: str) -> None:
    """Make ``key_id`` the active key (adding it if new), retiring the one active before."""
    now = utcnow()
    existing = session.scalar(select(SigningKey).where(SigningKey.key_id == key_id))
    if existing is not None and existing.active == 1:
        return
    if existing is not None and existing.revoked_at is not None:
        raise RuntimeError(f"signing key {key_id} was revoked: it cannot sign again")
    session.execute(update(SigningKey).where(SigningKey.active == 1).values(active=None, retired_at=now))
    session.flush()
    if existing is None:
        session.add(
            SigningKey(
                key_id=key_id,
                public_key=_b64(public),
                private_key=_b64(private) if private is not None else None,
                source=source,
                active=1,
                created_at=now,
            )
        )
    else:
        existing.active = 1
        existing.retired_at = None
    session.flush()


def active_signer(session: Session) -> Signer:
    """The key that signs now (made on first use), within ``session``'s transaction.

    Two replicas starting at once may both try to make the first key: the unique ``active``
    column lets one win, and the other reads the winner.
    """
    path = _key_file()
    if path:
        key_id, private, public = _read_key_file(path)
        row = session.scalar(select(SigningKey).where(SigningKey.active == 1))
        if row is None or row.key_id != key_id:
            with session.begin_nested():
                _activate(session, key_id=key_id, public=public, private=None, source="file")
        return Signer(key_id=key_id, private_raw=private)
    row = session.scalar(select(SigningKey).where(SigningKey.active == 1))
    if row is None:
        private, public = _generate()
        try:
            with session.begin_nested():
                _activate(
                    session, key_id=key_id_of(public), public=public, private=private, source="generated"
                )
        except IntegrityError:
            pass  # another process made the first key at the same instant
        row = session.scalar(select(SigningKey).where(SigningKey.active == 1))
        if row is None:  # pragma: no cover - the insert above or the other process's is visible
            raise RuntimeError("no active signing key")
    if row.private_key is None:
        raise RuntimeError(
            f"the active signing key {row.key_id} is read from a key file: set {KEY_FILE_ENV} "
            "in this process too (or rotate to a generated key)"
        )
    return Signer(key_id=row.key_id, private_raw=base64.b64decode(row.private_key))


def rotate(session: Session, *, key_file: str | None = None) -> str:
    """Retire the active key and activate a new one (generated, or the one in ``key_file``);
    return its key id. Committed."""
    with _lock:
        if key_file:
            key_id, _, public = _read_key_file(key_file)
            _activate(session, key_id=key_id, public=public, private=None, source="file")
        else:
            private, public = _generate()
            key_id = key_id_of(public)
            _activate(session, key_id=key_id, public=public, private=private, source="generated")
        session.commit()
        return key_id


def revoke(session: Session, *, key_id: str) -> None:
    """Withdraw ``key_id``: nothing it signed verifies any more, and it never signs again
    (if it was the active key, the next decision makes a new one). Committed."""
    row = session.scalar(select(SigningKey).where(SigningKey.key_id == key_id))
    if row is None:
        raise LookupError(f"no signing key {key_id!r}")
    now = utcnow()
    row.revoked_at = row.revoked_at or now
    if row.active == 1:
        row.active = None
        row.retired_at = now
    if row.private_key is not None:
        row.private_key = None  # a revoked key's private half is of no further use
    session.commit()


def _public(row: SigningKey) -> PublicKey:
    status = "revoked" if row.revoked_at else "active" if row.active == 1 else "retired"
    return PublicKey(
        key_id=row.key_id,
        public_raw=base64.b64decode(row.public_key),
        status=status,
        created_at=iso(row.created_at),
        retired_at=iso(row.retired_at),
        revoked_at=iso(row.revoked_at),
    )


def key_set(session: Session) -> KeySet:
    """Every key the service has signed with, with its status (what the keys route publishes)."""
    rows = session.scalars(select(SigningKey).order_by(SigningKey.id)).all()
    return KeySet.pinned(*(_public(r) for r in rows))


def list_keys(session: Session) -> list[dict[str, object]]:
    rows = session.scalars(select(SigningKey).order_by(SigningKey.id)).all()
    return [{**_public(r).to_json(), "source": r.source} for r in rows]
