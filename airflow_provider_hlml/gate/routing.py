"""The organisation's approval policy file: rules by approval type and urgency, from configuration.

``[hlml] approval_policy_file`` names a YAML file like::

    default:                      # every gate
      forbid: [requester]
    types:                        # by approval type (the gate's ``approval_type``)
      model_promotion:
        forbid: [requester, model_author]
        rules:
          - {name: ML lead, approvers: ["group:ml-leads"], required: 1}
          - {name: Product, approvers: ["group:product"], required: 1}
      code_execution:
        rules:
          - {name: Security, approvers: ["group:security-team"], required: 1}
    urgency:                      # by urgency (a code gate's urgency follows its risk level)
      critical:
        auto_approve: false       # a decision policy never approves a critical gate by itself
        rules:
          - {name: Executive, approvers: ["group:executives"], required: 1}
    models:                       # by registered model (the gate context's model_name)
      fraud-detector:
        auto_approve: false
        auto_reject: false

The sections that apply to a gate (``default``, its type, its urgency, its model) add up: all
their rules must be met, and all their ``forbid`` duties hold. ``auto_approve: false`` /
``auto_reject: false`` in any of them forbids a promotion decision policy
(:mod:`airflow_provider_hlml.policy.decision`) to approve / reject such a gate by itself: the
gate asks a person instead, and says why. A gate's own rules and duties are added to
them; nothing a gate says can remove one (a gate with ``allow_self_approval=True`` under a file
that forbids the requester is refused). The rules from the file are marked ``source: policy`` in
the request, so reviewers see where each rule comes from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from airflow_provider_hlml.gate.state import DUTIES, MAX_RULES, ApprovalRule

__all__ = ["PolicyFile", "PolicyFileError", "Requirement", "load_policy_file"]

#: A policy file larger than this is refused (it is configuration, not data).
MAX_POLICY_FILE_BYTES = 1_000_000
_SECTION_KEYS = {"rules", "forbid", "auto_approve", "auto_reject"}


class PolicyFileError(ValueError):
    """The policy file cannot be read or says something that is not a policy."""


@dataclass(frozen=True)
class Requirement:
    """What the file requires of one gate: rules to meet and duties barred from deciding."""

    rules: tuple[ApprovalRule, ...] = ()
    forbid: tuple[str, ...] = ()
    auto_approve: bool = True
    auto_reject: bool = True

    def __add__(self, other: Requirement) -> Requirement:
        return Requirement(
            rules=(*self.rules, *other.rules),
            forbid=tuple(dict.fromkeys((*self.forbid, *other.forbid))),
            auto_approve=self.auto_approve and other.auto_approve,
            auto_reject=self.auto_reject and other.auto_reject,
        )

    def allows(self, outcome: str) -> bool:
        """Whether a decision policy may decide ``outcome`` (``approve`` / ``reject``) by itself."""
        return self.auto_approve if outcome == "approve" else self.auto_reject


def _section(raw: Any, where: str) -> Requirement:
    if raw is None:
        return Requirement()
    if not isinstance(raw, Mapping):
        raise PolicyFileError(f"{where}: a mapping with 'rules', 'forbid', 'auto_approve', 'auto_reject'")
    unknown = set(raw) - _SECTION_KEYS
    if unknown:
        raise PolicyFileError(
            f"{where}: unknown keys {sorted(map(str, unknown))} (allowed: {', '.join(sorted(_SECTION_KEYS))})"
        )
    flags = {}
    for flag in ("auto_approve", "auto_reject"):
        value = raw.get(flag, True)
        if not isinstance(value, bool):
            raise PolicyFileError(f"{where}.{flag}: true or false")
        flags[flag] = value
    try:
        rules = ApprovalRule.parse_all(raw.get("rules") or [], f"{where}.rules")
    except ValueError as exc:
        raise PolicyFileError(str(exc)) from None
    forbid = raw.get("forbid") or []
    if not isinstance(forbid, list) or any(d not in DUTIES for d in forbid):
        raise PolicyFileError(f"{where}.forbid: a list of {', '.join(DUTIES)}")
    return Requirement(rules=tuple(replace(r, source="policy") for r in rules), forbid=tuple(forbid), **flags)


def _sections(raw: Any, where: str) -> dict[str, Requirement]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyFileError(f"{where}: a mapping of names to sections")
    return {str(name): _section(section, f"{where}.{name}") for name, section in raw.items()}


@dataclass(frozen=True)
class PolicyFile:
    """A parsed policy file."""

    default: Requirement = Requirement()
    types: Mapping[str, Requirement] | None = None
    urgency: Mapping[str, Requirement] | None = None
    models: Mapping[str, Requirement] | None = None

    @classmethod
    def parse(cls, data: Any, where: str = "policy file") -> PolicyFile:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PolicyFileError(f"{where}: a mapping with default, types, urgency and models")
        unknown = set(data) - {"default", "types", "urgency", "models"}
        if unknown:
            raise PolicyFileError(
                f"{where}: unknown keys {sorted(map(str, unknown))} (allowed: default, types, urgency, models)"
            )
        return cls(
            default=_section(data.get("default"), "default"),
            types=_sections(data.get("types"), "types"),
            urgency=_sections(data.get("urgency"), "urgency"),
            models=_sections(data.get("models"), "models"),
        )

    def requirement(self, approval_type: str, urgency: str, model: str | None = None) -> Requirement:
        """What the file requires of a gate of this type and urgency (about ``model``, if named)."""
        found = self.default + (self.types or {}).get(approval_type, Requirement())
        found = found + (self.urgency or {}).get(urgency, Requirement())
        if model is not None:
            found = found + (self.models or {}).get(model, Requirement())
        if len(found.rules) > MAX_RULES:
            raise PolicyFileError(f"the policy file gives a {approval_type} gate more than {MAX_RULES} rules")
        return found


_CACHE: dict[str, tuple[tuple[int, int], PolicyFile]] = {}


def load_policy_file(path: str) -> PolicyFile:
    """Read (and cache by modification time) the policy file at ``path``.

    :raises PolicyFileError: the file is missing, too large, not YAML or not a policy. A policy
        that is configured but unreadable never reads as "no policy".
    """
    import yaml

    try:
        stat = os.stat(path)
    except OSError as exc:
        raise PolicyFileError(
            f"[hlml] approval_policy_file {path!r} cannot be read: {exc.strerror}"
        ) from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    if stat.st_size > MAX_POLICY_FILE_BYTES:
        raise PolicyFileError(
            f"[hlml] approval_policy_file {path!r} is larger than {MAX_POLICY_FILE_BYTES} bytes"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"[hlml] approval_policy_file {path!r} is not readable YAML: {exc}") from None
    try:
        parsed = PolicyFile.parse(data)
    except PolicyFileError as exc:
        raise PolicyFileError(f"[hlml] approval_policy_file {path!r}: {exc}") from None
    _CACHE[path] = (stamp, parsed)
    return parsed
