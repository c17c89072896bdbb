"""What an MLflow registered-model name and alias may be, checked once for every place that takes one.

A name or alias may come from a DAG, a YAML spec or a rendered template: it is checked before it
reaches MLflow or a log line. MLflow's rule for an alias: letters, digits, ``_`` and ``-``, and not
``latest`` or ``v<n>``, which name versions.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["alias_problem", "check_alias", "check_model_name"]

_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_RESERVED_ALIAS = re.compile(r"(?i)latest|v\d+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def alias_problem(alias: Any) -> str | None:
    """Why ``alias`` cannot be a registered-model alias, or None when it can."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        return "must be 1-255 letters, digits, '_' or '-'"
    if _RESERVED_ALIAS.fullmatch(alias):
        return f"{alias!r} is reserved by MLflow (it names a version)"
    return None


def check_alias(alias: Any) -> str:
    """``alias`` when it can be a registered-model alias; ValueError naming the rule otherwise."""
    problem = alias_problem(alias)
    if problem is not None:
        raise ValueError(f"alias {problem}, got {str(alias)[:80]!r}")
    return str(alias)


def check_model_name(name: Any) -> str:
    """A registered model name as rendered: a non-empty single-line string of at most 256 characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > 256 or _CONTROL.search(name):
        raise ValueError(f"model_name must be a single-line name of 1-256 characters, got {str(name)[:80]!r}")
    return name
