"""Operator extra link "Approval request": where a reviewer decides on a gate's request."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink, conf

from airflow_provider_hlml import settings
from airflow_provider_hlml.review.links import dashboard_request_url
from airflow_provider_hlml.utils.ids import approval_call_id, deployment_id

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def approval_url(call_id: str) -> str:
    """
    The page where a reviewer decides on request ``call_id``.

    ``[hlml] approval_url_template`` (with a ``{call_id}`` placeholder) wins, e.g. a HumanLayer
    cloud page; otherwise the provider's dashboard in the Airflow UI, filtered on the request.

    :param call_id: HumanLayer call id.
    """
    template = settings.approval_url_template()
    if template:
        return template.replace("{call_id}", quote(call_id, safe=""))
    base = (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
    return dashboard_request_url(base, call_id)


class ApprovalRequestLink(BaseOperatorLink):
    """
    Link from a gate's task instance to its approval request.

    The URL follows from the task-instance key alone (the call id is derived from it), so the
    link needs no network call and works while the task is still deferred.
    """

    name = "Approval request"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        call_id = approval_call_id(
            ti_key.dag_id,
            ti_key.run_id,
            ti_key.task_id,
            ti_key.map_index,
            ti_key.try_number,
            deployment_id(),
        )
        return approval_url(call_id)
