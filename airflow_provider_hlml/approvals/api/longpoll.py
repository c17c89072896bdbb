"""Wake long-polling readers when a request changes.

Changes made in this process notify the waiters of that call at once. Changes made elsewhere (a
second server worker or replica, the CLI writing to the database) arrive on PostgreSQL through
``LISTEN hlml_approvals`` (:class:`ChangeListener`: a trigger of schema revision 0005 sends
``NOTIFY`` when a request's row changes, delivered on commit), so every replica wakes its waiters
at once. Without a listener (SQLite, another driver, the connection down) one background watcher
reads the recently changed rows every ``recheck_interval`` seconds while anyone is waiting, so the
cost does not grow with the number of waiters; with a listener the watcher only checks every
:data:`SAFETY_NET_SECONDS`, for a change made while the listener was reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

Key = tuple[str, str]
# How far back the watcher looks, so a transaction that commits late is still seen.
LOOKBACK = dt.timedelta(seconds=5)
#: The PostgreSQL channel the ``approval_requests`` trigger notifies with ``"<kind>:<call_id>"``.
NOTIFY_CHANNEL = "hlml_approvals"
#: Seconds between the watcher's re-reads while the listener is connected (a safety net).
SAFETY_NET_SECONDS = 5.0


class ChangeListener:
    """``LISTEN`` on PostgreSQL in a thread of its own; calls ``on_change((kind, call_id))`` for
    every notification (from the listener's thread).

    It holds one connection of its own (detached from the pool), reconnects with backoff when it
    drops, and reports through :attr:`connected` whether notifications can be relied on.

    :param connect: a new DBAPI connection (psycopg2 or psycopg 3).
    :param on_change: called with each changed request's key.
    """

    def __init__(self, connect: Callable[[], Any], on_change: Callable[[Key], None]) -> None:
        self._connect = connect
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.connected = False

    def start(self) -> None:
        """Start listening (idempotent; also after a fork)."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hlml-approvals-listen", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                conn.autocommit = True
                conn.cursor().execute(f"LISTEN {NOTIFY_CHANNEL}")
                self.connected = True
                backoff = 0.5
                self._receive(conn)
            except Exception as exc:  # the database restarting, a network error
                if not self._stop.is_set():
                    log.warning(
                        "Listening for changes failed (%s); retrying in %.1f s", type(exc).__name__, backoff
                    )
            finally:
                self.connected = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _receive(self, conn: Any) -> None:
        if hasattr(conn, "poll") and hasattr(conn, "notifies") and isinstance(conn.notifies, list):
            # psycopg2: wait for the socket, then poll the notifications in.
            while not self._stop.is_set():
                if select.select([conn], [], [], 1.0) == ([], [], []):
                    continue
                conn.poll()
                while conn.notifies:
                    self._deliver(conn.notifies.pop(0).payload)
            return
        # psycopg 3: a generator of notifications, woken every second to see if we should stop.
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=1.0):
                self._deliver(notify.payload)

    def _deliver(self, payload: Any) -> None:
        kind, sep, call_id = str(payload).partition(":")
        if sep and call_id:
            try:
                self._on_change((kind, call_id))
            except Exception:
                log.exception("A change notification could not be handled")


class ChangeHub:
    """Per-call events shared by all waiters of that call, plus a cross-process watcher."""

    def __init__(
        self,
        changes_since: Callable[[dt.datetime], Sequence[tuple[str, str, int]]],
        recheck_interval: float,
        listener: ChangeListener | None = None,
    ) -> None:
        self._changes_since = changes_since
        self._interval = recheck_interval
        self.listener = listener
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
        if self.listener is not None:
            self.listener.start()
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._watcher is None or self._watcher.done():
            self._loop = loop
            self._watcher = loop.create_task(self._watch(), name="hlml-approvals-change-watcher")

    async def _watch(self) -> None:
        while True:
            listening = self.listener is not None and self.listener.connected
            pause = max(self._interval, SAFETY_NET_SECONDS) if listening else self._interval
            await asyncio.sleep(pause)
            if not self._events:
                continue
            # Look back over the whole pause (and then some): nothing changed in it goes unseen.
            since = dt.datetime.now(dt.timezone.utc) - max(LOOKBACK, dt.timedelta(seconds=2 * pause))
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
            horizon = now - 2 * max(LOOKBACK.total_seconds(), 2 * pause)
            self._seen = {k: v for k, v in self._seen.items() if v[1] >= horizon}

    async def close(self) -> None:
        if self.listener is not None:
            await run_in_threadpool(self.listener.stop)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._watcher
            self._watcher = None
