"""Compliance check of content before a person approves publishing it.

Secrets and credentials come from detect-secrets; e-mail addresses, phone numbers and payment
card numbers (Luhn-checked) from patterns. Findings never repeat the sensitive value: they name
its type and line, and the redacted content replaces each flagged value.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

POLICIES = ("secrets", "pii")


@dataclass(frozen=True)
class ContentFinding:
    """
    One compliance problem.

    :param policy: ``secrets`` or ``pii``.
    :param kind: e.g. ``AWS Access Key``, ``email``, ``phone``, ``card_number``.
    :param line: 1-based line number.
    """

    policy: str
    kind: str
    line: int


@dataclass(frozen=True)
class ContentCheck:
    """
    The outcome of :func:`check_content`.

    :param passed: no finding.
    :param policies: the policies applied.
    :param findings: what was found (type and line only).
    :param redacted_content: the content with each flagged value replaced.
    """

    passed: bool
    policies: list[str]
    findings: list[ContentFinding] = field(default_factory=list)
    redacted_content: str = ""

    def to_dict(self, include_content: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not include_content:
            data.pop("redacted_content")
        return data


EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?!\w)"
)
CARD_RE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a digit string (payment card numbers pass it)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _secret_lines(content: str) -> list[tuple[int, str]]:
    """``(line, type)`` of every secret detect-secrets finds (with its default plugins and filters)."""
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    with tempfile.TemporaryDirectory(prefix="hlml-secrets-") as tmp:
        path = os.path.join(tmp, "content.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(content)
        collection = SecretsCollection()
        with default_settings():
            collection.scan_file(path)
        found = [(int(s.line_number), str(s.type)) for secrets in collection.data.values() for s in secrets]
    return sorted(set(found))


def _pii(line: str) -> list[tuple[str, tuple[int, int]]]:
    hits: list[tuple[str, tuple[int, int]]] = []
    taken: list[tuple[int, int]] = []

    def free(span: tuple[int, int]) -> bool:
        return all(span[1] <= a or span[0] >= b for a, b in taken)

    for m in CARD_RE.finditer(line):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            hits.append(("card_number", m.span()))
            taken.append(m.span())
    for m in EMAIL_RE.finditer(line):
        hits.append(("email", m.span()))
        taken.append(m.span())
    for m in PHONE_RE.finditer(line):
        digits = re.sub(r"\D", "", m.group(0))
        if 9 <= len(digits) <= 15 and free(m.span()):
            hits.append(("phone", m.span()))
            taken.append(m.span())
    return hits


def check_content(content: str, policies: Iterable[str] = POLICIES) -> ContentCheck:
    """
    Check ``content`` against ``policies`` (``secrets``: credentials; ``pii``: e-mail, phone, card numbers).

    :param content: the text to publish.
    :param policies: which checks to run.
    """
    chosen = [p.strip().lower() for p in policies]
    unknown = sorted(set(chosen) - set(POLICIES))
    if unknown:
        raise ValueError(f"policies: unknown {unknown}; choose from {list(POLICIES)}")
    lines = content.splitlines()
    findings: list[ContentFinding] = []
    redacted = list(lines)
    if "secrets" in chosen and content.strip():
        for line_no, kind in _secret_lines(content):
            findings.append(ContentFinding("secrets", kind, line_no))
            if 0 < line_no <= len(redacted):
                redacted[line_no - 1] = f"[redacted: {kind}]"
    if "pii" in chosen:
        for i, line in enumerate(lines, start=1):
            hits = _pii(line)
            for kind, _ in hits:
                findings.append(ContentFinding("pii", kind, i))
            if hits and not redacted[i - 1].startswith("[redacted:"):
                text = line
                for kind, (a, b) in sorted(hits, key=lambda h: -h[1][0]):
                    text = f"{text[:a]}[{kind}]{text[b:]}"
                redacted[i - 1] = text
    findings.sort(key=lambda f: (f.line, f.policy, f.kind))
    return ContentCheck(
        passed=not findings,
        policies=chosen,
        findings=findings,
        redacted_content="\n".join(redacted) + ("\n" if content.endswith("\n") else ""),
    )
