"""Wake long-polling readers when a request changes.

Changes made in this process notify the waiters of that call at once. Changes made elsewhere (a
second server worker, the CLI writing to the database) are found by one background watcher that
reads the recently changed rows every ``recheck_interval`` seconds while anyone is waiting, so the
cost does not grow with the number of waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

Key = tuple[str, str]
# How far back the watcher looks, so a transaction that commits late is still seen.
LOOKBACK = dt.timedelta(seconds=5)


class ChangeHub:
    """Per-call events shared by all waiters of that call, plus a cross-process watcher."""

    def __init__(
        self,
        changes_since: Callable[[dt.datetime], Sequence[tuple[str, str, int]]],
        recheck_interval: float,
    ) -> None:
        self._changes_since = changes_since
        self._interval = recheck_interval
        self._events: dict[Key, tuple[asyncio.Event, int]] = {}
        self._seen: dict[Key, tuple[int, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(n for _, n in self._events.values())

    def notify(self, key: Key) -> None:
        """Wake every waiter of ``key`` (call from the event loop)."""
        entry = self._events.pop(key, None)
        if entry is not None:
            entry[0].set()

    def notify_threadsafe(self, key: Key) -> None:
        """Wake the waiters of ``key`` from a worker thread (a sync route)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.notify, key)

    @contextlib.asynccontextmanager
    async def subscribe(self, key: Key) -> AsyncIterator[asyncio.Event]:
        """Register interest in ``key``; the yielded event is set on its next change."""
        self._ensure_watcher()
        event, count = self._events.get(key, (None, 0))
        if event is None:
            event = asyncio.Event()
        self._events[key] = (event, count + 1)
        try:
            yield event
        finally:
            current = self._events.get(key)
            if current is not None and current[0] is event:
                if current[1] <= 1:
                    del self._events[key]
                else:
                    self._events[key] = (event, current[1] - 1)

    def _ensure_watcher(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._watcher is None or self._watcher.done():
            self._loop = loop
            self._watcher = loop.create_task(self._watch(), name="hlml-approvals-change-watcher")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self._events:
                continue
            since = dt.datetime.now(dt.timezone.utc) - LOOKBACK
            try:
                rows = await run_in_threadpool(self._changes_since, since)
            except Exception:
                log.exception("could not read recent changes; retrying")
                continue
            now = time.monotonic()
            for kind, call_id, version in rows:
                key = (kind, call_id)
                seen = self._seen.get(key)
                if seen is None or seen[0] != version:
                    self._seen[key] = (version, now)
                    self.notify(key)
            horizon = now - 2 * LOOKBACK.total_seconds()
            self._seen = {k: v for k, v in self._seen.items() if v[1] >= horizon}

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._watcher
            self._watcher = None
