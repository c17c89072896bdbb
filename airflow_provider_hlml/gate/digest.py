"""What a reviewer was shown, as facts and one digest: the binding between an approval and a model.

The gate computes :func:`review_digest` over the facts of the context it sends (the model, its
version and run, the metrics and the validation verdict) and writes it into the request
(``spec.state["hlml"]["digest"]``). Before moving an alias,
:class:`~airflow_provider_hlml.operators.promote.ModelPromoteOperator` reads the same facts again
from MLflow and refuses, naming each fact that changed, when they no longer match (GitHub's
"dismiss stale reviews", for models).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["REVIEWED_KEYS", "changed_facts", "review_digest", "review_facts"]

#: The context keys a digest covers besides ``metrics`` (absent keys are left out).
REVIEWED_KEYS = (
    "model_name",
    "model_version",
    "mlflow_run_id",
    "passed",
    "champion_version",
    "validation_run_id",
)
# A context about a model names at least one of these.
_MODEL_KEYS = ("model_name", "model_version", "mlflow_run_id")


def _metric(value: Any) -> float | None:
    """A shown metric as a number: a validation report's ``candidate``, or the value itself."""
    if isinstance(value, Mapping):
        value = value.get("candidate")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range (JSON allows it)
        return None
    return number if math.isfinite(number) else None


def _fact(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    return str(value)


def review_facts(context: Any) -> dict[str, Any] | None:
    """The facts a context shows about a model (None when it is not about a model).

    :param context: a gate's request context, e.g. a ``ValidationReport`` or a ``TrainResult``.
    """
    if not isinstance(context, Mapping) or not any(context.get(k) for k in _MODEL_KEYS):
        return None
    facts: dict[str, Any] = {k: _fact(context[k]) for k in REVIEWED_KEYS if k in context}
    metrics = context.get("metrics")
    if isinstance(metrics, Mapping):
        facts["metrics"] = {str(name): _metric(value) for name, value in sorted(metrics.items(), key=str)}
    return facts


def review_digest(facts: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the facts, in canonical JSON."""
    blob = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def changed_facts(shown: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between the facts shown and the facts now, one phrase per fact.

    Only facts that were shown are compared (a fact MLflow cannot tell now reads as ``None``).
    """
    changes: list[str] = []
    for key in sorted(shown):
        if key == "metrics":
            then = shown.get("metrics") or {}
            current = now.get("metrics") or {}
            for name in sorted(then):
                if then[name] != current.get(name):
                    changes.append(f"metrics.{name}: shown {then[name]!r}, now {current.get(name)!r}")
        elif shown[key] != now.get(key):
            changes.append(f"{key}: shown {shown[key]!r}, now {now.get(key)!r}")
    return changes
