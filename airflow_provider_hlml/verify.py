"""``python -m airflow_provider_hlml.verify NAME@ALIAS``: check, without Airflow, that the model
an alias points to carries a valid signed attestation of its approval (exit 0) or say why not
(exit 1). See :mod:`airflow_provider_hlml.approvals.attest.verify`."""

from __future__ import annotations

from airflow_provider_hlml.approvals.attest.verify import Verdict, main, verify_model

__all__ = ["Verdict", "main", "verify_model"]

if __name__ == "__main__":
    raise SystemExit(main())
