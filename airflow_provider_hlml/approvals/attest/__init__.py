"""The service's signing keys and the attestations it signs when a request is decided.

The format and its verification are in :mod:`airflow_provider_hlml.gate.attestation`;
:mod:`.keys` manages the Ed25519 keys, :mod:`.sign` builds and signs a decision's statement,
:mod:`.verify` checks the model an alias points to (``hlml-approvals verify-model``).
"""
