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
        rules:
          - {name: Executive, approvers: ["group:executives"], required: 1}

The sections that apply to a gate (``default``, its type, its urgency) add up: all their rules
must be met, and all their ``forbid`` duties hold. A gate's own rules and duties are added to
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
_SECTION_KEYS = {"rules", "forbid"}


class PolicyFileError(ValueError):
    """The policy file cannot be read or says something that is not a policy."""


@dataclass(frozen=True)
class Requirement:
    """What the file requires of one gate: rules to meet and duties barred from deciding."""

    rules: tuple[ApprovalRule, ...] = ()
    forbid: tuple[str, ...] = ()

    def __add__(self, other: Requirement) -> Requirement:
        return Requirement(
            rules=(*self.rules, *other.rules), forbid=tuple(dict.fromkeys((*self.forbid, *other.forbid)))
        )


def _section(raw: Any, where: str) -> Requirement:
    if raw is None:
        return Requirement()
    if not isinstance(raw, Mapping):
        raise PolicyFileError(f"{where}: a mapping with 'rules' and/or 'forbid'")
    unknown = set(raw) - _SECTION_KEYS
    if unknown:
        raise PolicyFileError(f"{where}: unknown keys {sorted(map(str, unknown))} (allowed: rules, forbid)")
    try:
        rules = ApprovalRule.parse_all(raw.get("rules") or [], f"{where}.rules")
    except ValueError as exc:
        raise PolicyFileError(str(exc)) from None
    forbid = raw.get("forbid") or []
    if not isinstance(forbid, list) or any(d not in DUTIES for d in forbid):
        raise PolicyFileError(f"{where}.forbid: a list of {', '.join(DUTIES)}")
    return Requirement(rules=tuple(replace(r, source="policy") for r in rules), forbid=tuple(forbid))


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

    @classmethod
    def parse(cls, data: Any, where: str = "policy file") -> PolicyFile:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PolicyFileError(f"{where}: a mapping with default, types and urgency")
        unknown = set(data) - {"default", "types", "urgency"}
        if unknown:
            raise PolicyFileError(
                f"{where}: unknown keys {sorted(map(str, unknown))} (allowed: default, types, urgency)"
            )
        return cls(
            default=_section(data.get("default"), "default"),
            types=_sections(data.get("types"), "types"),
            urgency=_sections(data.get("urgency"), "urgency"),
        )

    def requirement(self, approval_type: str, urgency: str) -> Requirement:
        """What the file requires of a gate of this type and urgency."""
        found = self.default + (self.types or {}).get(approval_type, Requirement())
        found = found + (self.urgency or {}).get(urgency, Requirement())
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
