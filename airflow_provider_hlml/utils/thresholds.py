"""The one validation of metric thresholds, shared by the workflow spec and ``MLflowValidateOperator``.

A threshold that names a metric MLflow's default evaluator does not report, or asks a fraction
to exceed 1, can never pass: it is refused where it is written (when the spec is loaded or the
DAG is defined), not reported as an ordinary threshold miss once the model has been evaluated.

Problems are ``(field path, message)`` pairs, the field path relative to the ``thresholds``
owner, e.g. ``(("thresholds", "accuracy"), "must be between 0 and 1")``. The spec turns them into
``churn.yaml: stages[2].config.thresholds.accuracy: must be between 0 and 1``; the operator into
:class:`ThresholdsError` (``task 'validate': thresholds.accuracy: must be between 0 and 1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BOUNDED_METRICS",
    "METRIC_ALIASES",
    "THRESHOLD_KEYS",
    "ThresholdsError",
    "known_metrics",
    "mlflow_metric_name",
    "parse_thresholds",
    "threshold_problems",
]

#: Short names accepted in ``thresholds`` for MLflow's default-evaluator metric names.
METRIC_ALIASES: dict[str, str] = {
    "accuracy": "accuracy_score",
    "f1": "f1_score",
    "precision": "precision_score",
    "recall": "recall_score",
    "auc": "roc_auc",
    "mse": "mean_squared_error",
    "rmse": "root_mean_squared_error",
    "mae": "mean_absolute_error",
    "r2": "r2_score",
}

#: What ``mlflow.models.evaluate(evaluators=["default"])`` reports, per ``model_type``
#: (mlflow/models/evaluation/evaluators/classifier.py and regressor.py).
_EVALUATOR_METRICS: dict[str, frozenset[str]] = {
    "classifier": frozenset(
        {
            "example_count",
            "accuracy_score",
            "recall_score",
            "precision_score",
            "f1_score",
            "log_loss",
            "roc_auc",
            "precision_recall_auc",
            "true_negatives",
            "false_positives",
            "false_negatives",
            "true_positives",
        }
    ),
    "regressor": frozenset(
        {
            "example_count",
            "mean_absolute_error",
            "mean_squared_error",
            "root_mean_squared_error",
            "sum_on_target",
            "mean_on_target",
            "r2_score",
            "max_error",
            "mean_absolute_percentage_error",
        }
    ),
}

#: MLflow metric names whose value is a fraction: a threshold outside [0, 1] can never be met.
BOUNDED_METRICS: frozenset[str] = frozenset(
    {"accuracy_score", "precision_score", "recall_score", "f1_score", "roc_auc", "precision_recall_auc"}
)
#: ``r2_score`` is at most 1 (and may be negative).
_AT_MOST_ONE = frozenset({"r2_score"})

#: Keys of one metric's rule (``mlflow.models.MetricThreshold``'s arguments).
THRESHOLD_KEYS: tuple[str, ...] = (
    "threshold",
    "min_absolute_change",
    "min_relative_change",
    "greater_is_better",
)
_NUMBER_KEYS = THRESHOLD_KEYS[:3]

Problem = tuple[tuple[str, ...], str]


class ThresholdsError(ValueError):
    """Thresholds that can never pass; ``problems`` holds ``(field, message)`` pairs.

    :param owner: what the thresholds belong to, e.g. ``"task 'validate'"``, named in every line.
    :param problems: ``(field path, message)`` pairs from :func:`threshold_problems`.
    """

    def __init__(self, owner: str, problems: Sequence[Problem]) -> None:
        self.owner = owner
        self.problems = [(".".join(loc), message) for loc, message in problems]
        lines = [f"{owner}: {loc}: {message}" for loc, message in self.problems]
        count = f"{len(lines)} problem{'s' if len(lines) != 1 else ''}"
        super().__init__(f"invalid thresholds of {owner} ({count}):\n" + "\n".join(lines))


def mlflow_metric_name(name: str) -> str:
    """The MLflow metric name a threshold key stands for (``accuracy`` -> ``accuracy_score``)."""
    return METRIC_ALIASES.get(name, name)


def known_metrics(model_type: str) -> list[str]:
    """Names a threshold may use for ``model_type``: MLflow's metric names and their short forms."""
    reported = _EVALUATOR_METRICS.get(model_type, frozenset())
    return sorted(reported | {alias for alias, target in METRIC_ALIASES.items() if target in reported})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_or_none(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def _unknown_metric(name: str, model_type: str) -> str:
    known = known_metrics(model_type)
    article = "an" if model_type[:1] in "aeiou" else "a"
    message = f"not a metric of {article} {model_type}"
    import difflib  # only when a name is wrong: not at DAG parse

    suggestion = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if suggestion:
        return f"{message} (did you mean {suggestion[0]!r}?)"
    others = [
        t for t in _EVALUATOR_METRICS if t != model_type and mlflow_metric_name(name) in _EVALUATOR_METRICS[t]
    ]
    if others:
        return f"{message} ({name!r} is reported for model_type {others[0]!r}); known: {', '.join(known)}"
    return f"{message}; known: {', '.join(known)}"


def _rule_problems(loc: tuple[str, ...], metric: str, rule: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for key in rule:
        if key not in THRESHOLD_KEYS:
            import difflib

            suggestion = difflib.get_close_matches(str(key), THRESHOLD_KEYS, n=1, cutoff=0.6)
            hint = (
                f"did you mean {suggestion[0]!r}?" if suggestion else f"allowed: {', '.join(THRESHOLD_KEYS)}"
            )
            problems.append(((*loc, str(key)), f"unknown key ({hint})"))
    for key in _NUMBER_KEYS:
        value = rule.get(key)
        if value is not None and not _is_number(value):
            problems.append(((*loc, key), f"must be a number, got {value!r}"))
    if not isinstance(rule.get("greater_is_better", True), bool):
        problems.append(((*loc, "greater_is_better"), "must be true or false"))
    if all(rule.get(key) is None for key in _NUMBER_KEYS):
        problems.append((loc, "set at least one of threshold, min_absolute_change, min_relative_change"))
    absolute, relative, threshold = (
        _number_or_none(rule.get(key)) for key in ("min_absolute_change", "min_relative_change", "threshold")
    )
    if absolute is not None and absolute <= 0:
        problems.append(((*loc, "min_absolute_change"), "must be greater than 0"))
    if relative is not None and not 0 <= relative <= 1:
        problems.append(((*loc, "min_relative_change"), "must be between 0 and 1 (0.01 = 1 %)"))
    if threshold is not None:
        if metric in BOUNDED_METRICS and not 0 <= threshold <= 1:
            problems.append((loc, "must be between 0 and 1"))
        elif metric in _AT_MOST_ONE and threshold > 1:
            problems.append((loc, "must be at most 1"))
    return problems


def threshold_problems(thresholds: Any, model_type: str = "classifier") -> list[Problem]:
    """
    Everything that makes ``thresholds`` unable to pass, as ``(field path, message)`` pairs.

    Checks the shape of each rule (a number, or a mapping of :data:`THRESHOLD_KEYS`), the ranges
    MLflow's ``MetricThreshold`` accepts, fractions between 0 and 1, and that each metric is one
    MLflow's default evaluator reports for ``model_type`` (with a suggestion on a typo).

    :param thresholds: metric name -> rule, as given by the user.
    :param model_type: ``classifier`` or ``regressor``; another value skips the metric-name check.
    """
    if not isinstance(thresholds, Mapping) or not thresholds:
        return [
            (
                ("thresholds",),
                "must be a non-empty mapping of metric name -> rule (a number, or a mapping of "
                f"{', '.join(THRESHOLD_KEYS)})",
            )
        ]
    problems: list[Problem] = []
    for raw_name, rule in thresholds.items():
        name = str(raw_name)
        loc = ("thresholds", name)
        metric = mlflow_metric_name(name)
        if model_type in _EVALUATOR_METRICS and metric not in _EVALUATOR_METRICS[model_type]:
            problems.append((loc, _unknown_metric(name, model_type)))
        if _is_number(rule):
            rule = {"threshold": rule}
        if not isinstance(rule, Mapping):
            problems.append((loc, f"must be a number or a mapping, got {type(rule).__name__}"))
            continue
        problems.extend(_rule_problems(loc, metric, rule))
    return problems


def parse_thresholds(thresholds: Any, model_type: str, *, owner: str) -> dict[str, dict[str, Any]]:
    """
    ``thresholds`` checked by :func:`threshold_problems` and normalised for ``MetricThreshold``.

    :param thresholds: metric name -> a number (the threshold) or a mapping of :data:`THRESHOLD_KEYS`.
    :param model_type: ``classifier`` or ``regressor``.
    :param owner: named in the error, e.g. ``"task 'validate'"``.
    :raises ThresholdsError: listing every problem.
    :return: ``{metric: {"threshold", "min_absolute_change", "min_relative_change",
        "greater_is_better"}}``, numbers as floats (MLflow requires a float relative change).
    """
    problems = threshold_problems(thresholds, model_type)
    if problems:
        raise ThresholdsError(owner, problems)
    parsed: dict[str, dict[str, Any]] = {}
    for name, rule in thresholds.items():
        spec = {"threshold": rule} if _is_number(rule) else rule
        entry: dict[str, Any] = {
            key: None if spec.get(key) is None else float(spec[key]) for key in _NUMBER_KEYS
        }
        entry["greater_is_better"] = spec.get("greater_is_better", True)
        parsed[str(name)] = entry
    return parsed
