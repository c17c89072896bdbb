"""Export the audit chain as JSON Lines, verify an export offline, and hold the database to it.

An export has one line per event, in ``seq`` order, with every column of ``audit_events`` (``at``
as hashed, ISO-8601 UTC) plus the request's ``kind`` and ``call_id`` for readers, and ends with
``{"head": {"seq": N, "hash": "..."}}``. Kept where the database's owner cannot rewrite it (a WORM
bucket), its head later shows whether the database chain was rewritten since:
``hlml-approvals audit verify --against EXPORT.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import IO, Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from airflow_provider_hlml.approvals.audit.chain import (
    EVENT_COLUMNS,
    Break,
    ChainHead,
    ChainWalk,
    VerifyReport,
    compare,
    connected,
    format_at,
    read_head,
)
from airflow_provider_hlml.approvals.models import ApprovalRequest, AuditEvent

_events = AuditEvent.__table__
_requests = ApprovalRequest.__table__
#: The keys of an event line, in the order :class:`ChainWalk` reads them.
EVENT_KEYS = (
    "id",
    "seq",
    "request_id",
    "event",
    "at",
    "actor",
    "on_behalf_of",
    "comment",
    "metadata",
    "prev_hash",
    "request_prev_hash",
    "hash",
)


__all__ = ["ExportError", "ExportSummary", "compare", "export", "exported_head", "verify_export"]


class ExportError(ValueError):
    """An export file that is not one (a line that is not a JSON object)."""


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export` wrote: the number of events and the head line."""

    events: int
    head: ChainHead


def export(source: Session | Connection | Engine, file: IO[str], *, batch: int = 20_000) -> ExportSummary:
    """Write the chain up to its current head to ``file`` as JSON Lines, then the head line.

    Events appended while this runs are left out (they are past the head read first), so the
    export always ends at a head the database had.
    """
    with connected(source) as conn:
        head = read_head(conn) or ChainHead(0, "")
        rows = conn.execution_options(yield_per=batch).execute(
            select(*EVENT_COLUMNS, _requests.c.kind, _requests.c.call_id)
            .select_from(_events.outerjoin(_requests, _events.c.request_id == _requests.c.id))
            .where(_events.c.seq <= head.seq)
            .order_by(_events.c.seq)
        )
        count = 0
        try:
            for row in rows:
                line = dict(zip(EVENT_KEYS, row[: len(EVENT_KEYS)], strict=True))
                line["at"] = format_at(line["at"])
                line["kind"], line["call_id"] = row[len(EVENT_KEYS) :]
                file.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
        finally:
            rows.close()
        file.write(json.dumps({"head": head.to_json()}) + "\n")
        return ExportSummary(count, head)


def verify_export(lines: Iterable[str]) -> VerifyReport:
    """Verify an export (its lines) without a database: every event's hash and links, and that
    the chain ends exactly at the head line. Raises :class:`ExportError` on a malformed line."""
    walk = ChainWalk()
    head: ChainHead | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        item = _parse(line, number)
        if head is not None:
            return VerifyReport(walk.count, head, Break("forged", f"line {number} follows the head line"))
        if set(item) == {"head"}:
            head = _head_of(item["head"], number)
            continue
        found = walk.step([item.get(key) for key in EVENT_KEYS])
        if found is not None:
            return VerifyReport(walk.count, head, _with_call_id(found, item))
    if head is None:
        return VerifyReport(
            walk.count,
            None,
            Break("truncated", f"the export has no head line after seq {walk.head.seq} (truncated)"),
        )
    return VerifyReport(walk.count, head, walk.finish(head))


def exported_head(lines: Iterable[str]) -> ChainHead:
    """The head of an export that verifies; raises :class:`ExportError` if it does not."""
    report = verify_export(lines)
    if not report.ok or report.head is None:
        raise ExportError(f"the export does not verify: {report.describe()}")
    return report.head


def _parse(line: str, number: int) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ExportError(f"line {number} is not JSON: {exc}") from None
    if not isinstance(item, dict):
        raise ExportError(f"line {number} is not a JSON object")
    return item


def _head_of(value: Any, number: int) -> ChainHead:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("seq"), int)
        or not isinstance(value.get("hash"), str)
    ):
        raise ExportError(f'line {number}: the head must be {{"seq": N, "hash": "..."}}')
    return ChainHead(value["seq"], value["hash"])


def _with_call_id(found: Break, item: dict[str, Any]) -> Break:
    call_id = item.get("call_id")
    return replace(found, call_id=call_id) if isinstance(call_id, str) else found
