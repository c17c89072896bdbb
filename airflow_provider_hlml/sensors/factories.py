"""Gates for common approvals: running code, publishing content, deciding a workflow step.

Each factory returns a :class:`~airflow_provider_hlml.sensors.approval.HumanApprovalSensor` (or a
subclass that adds an analysis to the request's context when the task runs, never at DAG parse).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_hlml.sensors.approval import URGENCIES, HumanApprovalSensor

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = [
    "CodeExecutionApprovalSensor",
    "ContentApprovalSensor",
    "code_execution_approval",
    "content_approval",
    "workflow_approval",
]


class CodeExecutionApprovalSensor(HumanApprovalSensor):
    """A gate whose context carries a static security analysis of the code to run."""

    template_fields: Sequence[str] = (*HumanApprovalSensor.template_fields, "code", "environment")

    def __init__(
        self, *, code: str, environment: str, language: str | None, urgency_from_risk: bool, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.code = code
        self.environment = environment
        self.language = language
        self.urgency_from_risk = urgency_from_risk

    def request_context(self, context: Context) -> dict[str, Any]:
        from airflow_provider_hlml.analysis.code import analyze_code, code_digest

        analysis = analyze_code(self.code, self.language)
        return {
            **super().request_context(context),
            "code": self.code,
            "sha256": code_digest(self.code),
            "language": analysis.language,
            "environment": self.environment,
            "risk_level": analysis.risk_level,
            "security_analysis": analysis.to_dict(),
        }

    def request_urgency(self, request_context: Mapping[str, Any]) -> str:
        risk = request_context.get("risk_level")
        if self.urgency_from_risk and risk in URGENCIES:
            return str(risk)
        return self.urgency


class ContentApprovalSensor(HumanApprovalSensor):
    """A gate whose context carries a compliance check of the content to publish."""

    template_fields: Sequence[str] = (*HumanApprovalSensor.template_fields, "content")

    def __init__(self, *, content: str, policies: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.content = content
        self.policies = list(policies)

    def request_context(self, context: Context) -> dict[str, Any]:
        from airflow_provider_hlml.analysis.content import check_content

        result = check_content(self.content, self.policies)
        return {
            **super().request_context(context),
            "content": result.redacted_content,
            "compliance": result.to_dict(),
        }

    def request_urgency(self, request_context: Mapping[str, Any]) -> str:
        compliance = request_context.get("compliance") or {}
        if compliance.get("passed") is False and URGENCIES.index(self.urgency) < URGENCIES.index("high"):
            return "high"
        return self.urgency


def code_execution_approval(
    code: str,
    environment: str,
    *,
    language: str | None = None,
    task_id: str = "approve_code_execution",
    subject: str | None = None,
    urgency: str | None = None,
    **kwargs: Any,
) -> HumanApprovalSensor:
    """
    A gate asking to run ``code`` in ``environment``, with a static security analysis in its context.

    Python is analysed with bandit, SQL and shell with rules for destructive statements; the
    risk level becomes the urgency unless ``urgency`` is given. The analysis runs when the task
    runs, not at DAG parse time (``code`` may be templated).

    :param code: the snippet to run (templated).
    :param environment: where it would run, e.g. ``production`` (templated).
    :param language: ``python``, ``sql`` or ``shell``; guessed when ``None``.
    :param task_id: task id of the gate.
    :param subject: headline; defaults to "Run <language> code in <environment>?".
    :param urgency: fixed urgency instead of the risk level.
    :param kwargs: any other :class:`HumanApprovalSensor` argument.
    """
    fence = language or ""
    return CodeExecutionApprovalSensor(
        task_id=task_id,
        subject=subject or f"Run {language or 'this'} code in {environment}?",
        body=kwargs.pop("body", None) or f"Code to run in **{environment}**:\n\n```{fence}\n{code}\n```",
        approval_type="code_execution",
        urgency=urgency or "medium",
        urgency_from_risk=urgency is None,
        code=code,
        environment=environment,
        language=language,
        **kwargs,
    )


def content_approval(
    content: str,
    channel: Any,
    policies: Sequence[str] = ("secrets", "pii"),
    *,
    task_id: str = "approve_content",
    subject: str = "Publish this content?",
    **kwargs: Any,
) -> HumanApprovalSensor:
    """
    A gate asking to publish ``content``, with a compliance check in its context.

    Secrets (detect-secrets) and e-mail / phone / card-number PII are reported by type and line;
    the reviewer sees the content with those values replaced.

    :param content: the text to publish (templated).
    :param channel: HumanLayer ``ContactChannel`` the reviewer is reached on.
    :param policies: ``secrets`` and/or ``pii``.
    :param task_id: task id of the gate.
    :param subject: headline.
    :param kwargs: any other :class:`HumanApprovalSensor` argument.
    """
    from airflow_provider_hlml.analysis.content import POLICIES

    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        raise ValueError(f"policies: unknown {unknown}; choose from {list(POLICIES)}")
    return ContentApprovalSensor(
        task_id=task_id,
        subject=subject,
        body=kwargs.pop("body", "Review the content and its compliance check below."),
        approval_type="content_publishing",
        channel=channel,
        content=content,
        policies=policies,
        **kwargs,
    )


def workflow_approval(
    workflow_id: str,
    question: str,
    context: Any = None,
    *,
    task_id: str = "approve_workflow",
    **kwargs: Any,
) -> HumanApprovalSensor:
    """
    A gate asking a yes/no ``question`` about workflow ``workflow_id``.

    :param workflow_id: id of the workflow (e.g. the DAG or spec name).
    :param question: the question, used as the subject (templated).
    :param context: dict shown to the reviewer (templated; may be an ``XComArg``).
    :param task_id: task id of the gate.
    :param kwargs: any other :class:`HumanApprovalSensor` argument.
    """
    return HumanApprovalSensor(
        task_id=task_id,
        subject=question,
        body=kwargs.pop("body", f"Decision needed for workflow `{workflow_id}`."),
        context={"workflow_id": workflow_id, "details": context}
        if context is not None
        else {"workflow_id": workflow_id},
        approval_type="workflow_decision",
        **kwargs,
    )
