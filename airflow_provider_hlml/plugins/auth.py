"""Authentication and authorisation of dashboard requests through Airflow's auth manager.

Airflow mounts plugin apps without any authentication, so every dashboard route depends on
:func:`require_user`, which resolves the caller exactly like Airflow's own API does (the
``Authorization: Bearer`` JWT, else the ``_token`` cookie the Airflow UI sets at login) and then
asks the auth manager whether the user may see the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, HTTPException, Request, status

from airflow_provider_hlml.gate.policy import Responder, names_any

if TYPE_CHECKING:
    from collections.abc import Iterable

#: Resource name the auth manager sees for the dashboard pages.
DASHBOARD_RESOURCE = "HLML dashboard"


async def require_user(request: Request, user: Annotated[BaseUser, Depends(get_user)]) -> BaseUser:
    """The logged-in Airflow user allowed to view the dashboard (401 anonymous, 403 not allowed)."""
    if not get_auth_manager().is_authorized_custom_view(
        method="GET", resource_name=DASHBOARD_RESOURCE, user=user
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "You may not view the HLML dashboard")
    return user


CurrentUser = Annotated[BaseUser, Depends(require_user)]


def require_same_origin(request: Request) -> None:
    """Refuse state-changing requests sent by another site with the user's cookie.

    The session cookie is ``SameSite=Lax`` already; this check also covers browsers or proxies
    that do not honour it. Requests without ``Origin`` (API clients with a Bearer token) pass.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Cross-origin request refused")


@dataclass(frozen=True)
class Identity:
    """Who the logged-in user is, as the approvals service is told and approver lists name it."""

    name: str
    email: str | None
    user_id: str

    @classmethod
    def of(cls, user: BaseUser) -> Identity:
        email = getattr(user, "email", None)
        return cls(
            name=user.get_name(),
            email=email if isinstance(email, str) and email else None,
            user_id=str(user.get_id()),
        )

    @property
    def responder(self) -> Responder:
        """This user as the approval policy judges them: by the name and e-mail address the
        dashboard sends with an answer (:meth:`user_info`), exactly as the approvals service
        will, so the dashboard never offers a decision the service would refuse."""
        return Responder(name=self.name, email=self.email)

    def matches_any(self, principals: Iterable[Any]) -> bool:
        """Whether one of ``principals`` (names or e-mail addresses) names this user."""
        return names_any(self.responder.identities, principals)

    def user_info(self) -> dict[str, Any]:
        return {"name": self.name, "email": self.email}


def readable_dag_ids(user: BaseUser) -> set[str]:
    """DAG ids the user may read."""
    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def can_edit_dag(user: BaseUser, dag_id: str | None) -> bool:
    """Whether the user may change the DAG (all DAGs when ``dag_id`` is None)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)) if dag_id else None
    return bool(get_auth_manager().is_authorized_dag(method="PUT", details=details, user=user))


def can_read_dag(user: BaseUser, dag_id: str | None) -> bool:
    """Whether the user may read the DAG (all DAGs when ``dag_id`` is None)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)) if dag_id else None
    return bool(get_auth_manager().is_authorized_dag(method="GET", details=details, user=user))
