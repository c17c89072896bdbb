"""The FastAPI application factory of the approvals service."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from airflow_provider_hlml.approvals import db, store
from airflow_provider_hlml.approvals.api.deps import ServiceState
from airflow_provider_hlml.approvals.api.errors import BodySizeLimitMiddleware, install_error_handlers
from airflow_provider_hlml.approvals.api.longpoll import ChangeHub, ChangeListener
from airflow_provider_hlml.approvals.api.routes import (
    attestation,
    delivery,
    function_calls,
    human_contacts,
    registry,
    service,
)
from airflow_provider_hlml.approvals.attest.keys import active_signer, configure_key_file
from airflow_provider_hlml.approvals.settings import ApprovalsSettings
from airflow_provider_hlml.approvals.webhooks import Publisher
from airflow_provider_hlml.gate.attestation import WELL_KNOWN_KEYS_PATH

log = logging.getLogger(__name__)


def create_app(settings: ApprovalsSettings | None = None) -> FastAPI:
    """Build the service: HumanLayer-compatible routes under ``settings.prefix`` plus ``/healthz``.

    The app may be served on its own or mounted into another ASGI app; nothing depends on its
    lifespan having run (the change watcher starts with the first long-poll).

    :param settings: service settings; read from ``HLML_APPROVALS_*`` variables when omitted.
    """
    settings = settings or ApprovalsSettings()
    if settings.migrate_on_start:
        db.migrate(settings.database_url)
    engine = db.make_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = db.make_sessionmaker(engine)
    configure_key_file(settings.signing_key_file)

    def changes_since(since: dt.datetime) -> Sequence[tuple[str, str, int]]:
        with sessions() as session:
            return store.changes_since(session, since=since)

    def wake_delivery() -> None:
        if state.delivery is not None:
            state.delivery.wake()

    def ensure_signing_key() -> None:
        """Make (or record, from the key file) the signing key at start, so the keys route lists
        it before the first decision. Best effort: the first decision makes it otherwise."""
        try:
            with sessions() as session:
                active_signer(session)
                session.commit()
        except Exception as exc:  # e.g. a database not migrated yet: the routes say so
            log.warning("No signing key made at start (%s): the first decision makes it", type(exc).__name__)

    listener = None
    if engine.dialect.name == "postgresql":

        def connect() -> Any:
            raw = engine.raw_connection()
            conn = raw.driver_connection
            raw.detach()  # the listener keeps this connection for itself
            return conn

        def on_change(key: tuple[str, str]) -> None:
            state.hub.notify_threadsafe(key)
            wake_delivery()  # e.g. a request another replica created or decided

        listener = ChangeListener(connect, on_change)

    state = ServiceState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        hub=ChangeHub(changes_since, settings.recheck_interval, listener),
        # Settled requests go to in-process listeners at once; webhook URLs get them from the
        # delivery outbox, whose worker the publisher wakes.
        publisher=Publisher(settings.webhook_url_list, wake=wake_delivery),
    )

    if settings.delivers:
        from airflow_provider_hlml.approvals.api.serialize import body_for
        from airflow_provider_hlml.approvals.delivery import DeliveryWorker

        state.delivery = DeliveryWorker(
            settings, sessions, body_of=body_for, run_loop=settings.delivery_in_server
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ensure_signing_key()
        if state.delivery is not None:
            state.delivery.start()
        yield
        if state.delivery is not None:
            state.delivery.stop()
        await state.hub.close()
        state.publisher.close()
        engine.dispose()

    prefix = "/" + settings.prefix.strip("/") if settings.prefix.strip("/") else ""
    app = FastAPI(
        title="HLML approvals service",
        summary="A self-hosted, HumanLayer-compatible approvals API",
        version="1",
        lifespan=lifespan,
        openapi_url=f"{prefix}/openapi.json",
        docs_url=f"{prefix}/docs",
        redoc_url=None,
        # Starlette's trailing-slash redirect builds its Location from the Host header.
        redirect_slashes=False,
    )
    app.state.approvals = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(function_calls.router, prefix=prefix)
    app.include_router(human_contacts.router, prefix=prefix)
    app.include_router(service.router, prefix=prefix)
    app.include_router(delivery.router, prefix=prefix)
    app.include_router(attestation.router, prefix=prefix)
    app.include_router(registry.router, prefix=prefix)
    app.add_api_route(WELL_KNOWN_KEYS_PATH, attestation.public_keys, methods=["GET"], include_in_schema=False)
    if prefix:
        app.add_api_route("/healthz", service.healthz, methods=["GET"], include_in_schema=False)
    return app
