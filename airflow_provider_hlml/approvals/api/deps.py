"""Service state and the dependencies routes share (``SessionDep``, ``CurrentActor``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from airflow_provider_hlml.approvals import store
from airflow_provider_hlml.approvals.api.longpoll import ChangeHub
from airflow_provider_hlml.approvals.delivery import DeliveryWorker
from airflow_provider_hlml.approvals.settings import ApprovalsSettings
from airflow_provider_hlml.approvals.store import Actor, ServiceError
from airflow_provider_hlml.approvals.webhooks import Publisher

T = TypeVar("T")


@dataclass
class ServiceState:
    """What one app instance owns: settings, database engine, sessions, change hub, key cache."""

    settings: ApprovalsSettings
    engine: Engine
    sessions: sessionmaker[Session]
    hub: ChangeHub
    publisher: Publisher = field(default_factory=Publisher)
    delivery: DeliveryWorker | None = None
    _auth_cache: dict[str, tuple[Actor, float]] = field(default_factory=dict)

    @property
    def inline_reads(self) -> bool:
        """Whether status reads run on the event loop instead of a worker thread.

        A SQLite read of one indexed row (WAL mode: readers never wait for writers) takes less
        time than handing it to a thread and back, so by default SQLite reads run inline;
        network databases always use the thread pool.
        """
        if self.settings.inline_reads is not None:
            return self.settings.inline_reads
        return self.engine.dialect.name == "sqlite"

    def announce(self, kind: str, call_id: str, body: dict[str, Any], event: str | None = None) -> None:
        """Tell waiting long-polls, in-process listeners (``event``, when the request is settled
        or answered) and the delivery worker (which also POSTs the webhooks) that request
        ``call_id`` changed."""
        self.hub.notify_threadsafe((kind, call_id))
        if event is not None:
            self.publisher.publish(event, body)
        if self.delivery is not None:
            self.delivery.wake()

    def run(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Run ``fn(session, **kwargs)`` in a fresh session (call from a worker thread)."""
        with self.sessions() as session:
            return fn(session, **kwargs)

    def authenticate(self, key: str) -> Actor | None:
        hashed = store.hash_key(key)
        cached = self._auth_cache.get(hashed)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def remember(self, key: str, actor: Actor) -> None:
        if self.settings.auth_cache_seconds > 0:
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[store.hash_key(key)] = (
                actor,
                time.monotonic() + self.settings.auth_cache_seconds,
            )


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.approvals
    # Started with the first request, not at import: the app may be mounted (no lifespan) or
    # forked into workers (threads do not survive a fork).
    if state.delivery is not None:
        state.delivery.start()
    if state.hub.listener is not None:
        state.hub.listener.start()
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key made with `hlml-approvals keys create`.")


async def current_actor(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Actor:
    """The caller named by the ``Authorization: Bearer <key>`` header (401 when missing or unknown)."""
    if credentials is None or not credentials.credentials:
        raise ServiceError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    key = credentials.credentials
    actor = state.authenticate(key)
    if actor is None:
        actor = await run_in_threadpool(state.run, store.authenticate, key=key)
        if actor is None:
            raise ServiceError(401, "unauthorized", "invalid or revoked API key")
        state.remember(key, actor)
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


def require_roles(*roles: str) -> Callable[[Actor], Awaitable[Actor]]:
    """A dependency that lets only ``roles`` through (403 otherwise)."""

    async def check(actor: CurrentActor) -> Actor:
        if actor.role not in roles:
            raise ServiceError(
                403, "forbidden", f"role {actor.role!r} may not do this; allowed roles: {', '.join(roles)}"
            )
        return actor

    return check


CreatorActor = Annotated[Actor, Depends(require_roles("agent", "admin"))]
ManagerActor = Annotated[Actor, Depends(require_roles("agent", "admin", "delegate"))]
