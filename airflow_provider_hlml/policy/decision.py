"""The promotion decision policy: decide a clear win or a clear regression by evidence, and ask a
person only about the rest.

The validation stage scores the candidate and the current champion on the same validation rows.
For each metric of the policy it computes the difference *candidate minus champion* (signed so
that positive is better) and its paired bootstrap confidence interval over the rows
(``scipy.stats.bootstrap(paired=True)``, percentile method, seeded: the same data and seed give
the same interval). Three outcomes:

- ``auto_reject``: a threshold missed (the candidate's value on the whole set), or a metric whose
  interval lies entirely below minus its allowed regression (a clear regression);
- ``auto_approve``: every threshold met, every metric's interval entirely above its required
  improvement (a clear win), and the policy allows auto-approval;
- ``human``: everything else (a tie within noise, a first model with no champion to compare,
  auto-approval forbidden), which goes to a person as before.

A decision by the policy is made by a named principal, ``policy:<name>-v<version>``, so the
approvals service, the promotion and the dashboard can tell it from a person's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "AUTO_APPROVE",
    "AUTO_REJECT",
    "HUMAN",
    "METRICS",
    "DecisionPolicy",
    "MetricEvidence",
    "MetricRule",
    "PolicyDecision",
    "PolicyError",
    "decide",
]

Outcome = Literal["auto_approve", "auto_reject", "human"]
AUTO_APPROVE: Final = "auto_approve"
AUTO_REJECT: Final = "auto_reject"
HUMAN: Final = "human"

#: Metrics the policy computes on resampled rows, and whether greater is better.
METRICS: dict[str, bool] = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "rmse": False,
    "mae": False,
}
#: What a policy's name may be (it becomes part of the principal decisions are recorded under).
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: Bootstrap resamples per batch (bounds memory: batch x rows x 3 arrays).
_BATCH = 100


class PolicyError(ValueError):
    """A policy that cannot be evaluated as written (unknown metric, a bound out of range)."""


@dataclass(frozen=True)
class MetricRule:
    """What the policy requires of one metric.

    :param metric: one of :data:`METRICS`.
    :param threshold: the candidate's value must reach it (at least, or at most for error
        metrics); None = no threshold.
    :param min_improvement: a clear win needs the whole interval of the improvement above this
        (in the metric's units; e.g. ``0.01`` = one accuracy point).
    :param max_regression: a clear regression is an interval entirely below minus this.
    """

    metric: str
    threshold: float | None = None
    min_improvement: float = 0.0
    max_regression: float = 0.0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise PolicyError(f"metric {self.metric!r}: one of {sorted(METRICS)}")
        for name in ("min_improvement", "max_regression"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PolicyError(f"{self.metric}.{name}: a finite number >= 0")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise PolicyError(f"{self.metric}.threshold: a finite number")

    @property
    def greater_is_better(self) -> bool:
        return METRICS[self.metric]


@dataclass(frozen=True)
class DecisionPolicy:
    """A named, versioned promotion decision policy.

    :param rules: one :class:`MetricRule` per metric.
    :param resamples: bootstrap resamples (1,000 by default).
    :param confidence: the intervals' confidence level.
    :param seed: the resampling seed (reproducible intervals).
    :param allow_auto_approve: whether a clear win is approved without a person (a governance
        policy file can forbid it per model or approval type).
    :param allow_auto_reject: whether a clear regression is rejected without a person.
    :param override_window: seconds during which a person may still decide instead of the policy:
        the gate's request stays open that long (reviewers see the policy's proposal and evidence)
        and the policy's decision is recorded only if nobody answered. 0: at once.
    """

    rules: tuple[MetricRule, ...]
    name: str = "champion-margin"
    version: int = 1
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    allow_auto_approve: bool = True
    allow_auto_reject: bool = True
    override_window: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise PolicyError("name: 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int)
            or not 1 <= self.version <= 10**6
        ):
            raise PolicyError("version: an integer from 1 to 1000000")
        for flag in ("allow_auto_approve", "allow_auto_reject"):
            if not isinstance(getattr(self, flag), bool):
                raise PolicyError(f"{flag}: true or false")
        window = self.override_window
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 <= window <= 30 * 86_400:
            raise PolicyError("override_window: seconds from 0 to 2592000 (30 days)")
        if not self.rules:
            raise PolicyError("a decision policy needs at least one metric rule")
        if len({r.metric for r in self.rules}) != len(self.rules):
            raise PolicyError("one rule per metric")
        if not 100 <= self.resamples <= 100_000:
            raise PolicyError("resamples: between 100 and 100000")
        if not 0.5 < self.confidence < 1:
            raise PolicyError("confidence: between 0.5 and 1")

    @property
    def principal(self) -> str:
        """Who an auto-decision is recorded as: ``policy:<name>-v<version>``."""
        return f"policy:{self.name}-v{self.version}"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> DecisionPolicy:
        """A policy from its JSON/YAML form: ``{"name", "version", "metrics": {metric:
        {"threshold", "min_improvement", "max_regression"}}, "resamples", "confidence", "seed",
        "allow_auto_approve", "allow_auto_reject", "override_window"}``."""
        if not isinstance(raw, Mapping):
            raise PolicyError("a decision policy is a mapping")
        metrics = raw.get("metrics")
        if not isinstance(metrics, Mapping) or not metrics:
            raise PolicyError("metrics: a mapping of metric name to its rule")
        rules = []
        for metric, rule in metrics.items():
            rule = rule if isinstance(rule, Mapping) else {"threshold": rule}
            unknown = set(rule) - {"threshold", "min_improvement", "max_regression"}
            if unknown:
                raise PolicyError(f"metrics.{metric}: unknown keys {sorted(unknown)}")
            rules.append(
                MetricRule(metric=str(metric), **{k: float(v) for k, v in rule.items() if v is not None})
            )
        known = {
            "name",
            "version",
            "resamples",
            "confidence",
            "seed",
            "allow_auto_approve",
            "allow_auto_reject",
            "override_window",
        }
        unknown = set(raw) - known - {"metrics"}
        if unknown:
            raise PolicyError(f"unknown keys {sorted(unknown)}")
        return cls(rules=tuple(rules), **{k: raw[k] for k in known if k in raw})

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "principal": self.principal,
            "metrics": {
                r.metric: {
                    "threshold": r.threshold,
                    "min_improvement": r.min_improvement,
                    "max_regression": r.max_regression,
                }
                for r in self.rules
            },
            "resamples": self.resamples,
            "confidence": self.confidence,
            "seed": self.seed,
            "allow_auto_approve": self.allow_auto_approve,
            "allow_auto_reject": self.allow_auto_reject,
            "override_window": self.override_window,
        }


@dataclass(frozen=True)
class MetricEvidence:
    """One metric's evidence: values, the improvement (positive = better) and its interval."""

    metric: str
    candidate: float
    champion: float | None
    improvement: float | None
    low: float | None
    high: float | None
    threshold_met: bool
    verdict: Literal["win", "regression", "tie", "threshold_missed", "no_champion"]

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "candidate": self.candidate,
            "champion": self.champion,
            "improvement": self.improvement,
            "interval": [self.low, self.high] if self.low is not None else None,
            "threshold_met": self.threshold_met,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class PolicyDecision:
    """The policy's outcome, why, and the evidence (what the XCom report and the request carry)."""

    outcome: Outcome
    reason: str
    evidence: tuple[MetricEvidence, ...]
    policy: DecisionPolicy
    rows: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def principal(self) -> str | None:
        return self.policy.principal if self.outcome != HUMAN else None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "principal": self.principal,
            "policy": self.policy.to_json(),
            "rows": self.rows,
            "metrics": {e.metric: e.to_json() for e in self.evidence},
            **self.extra,
        }


def _scores(metric: str, y: NDArray[Any], pred: NDArray[Any]) -> NDArray[np.float64]:
    """``metric`` over the last axis (rows), for every leading index (resample) at once."""
    import numpy as np

    if metric == "accuracy":
        return np.mean(pred == y, axis=-1)
    if metric in ("precision", "recall", "f1"):
        positive, actual = pred == 1, y == 1
        tp = np.sum(positive & actual, axis=-1)
        fp = np.sum(positive & ~actual, axis=-1)
        fn = np.sum(~positive & actual, axis=-1)
        return _from_counts(metric, tp, fp, fn)
    error = pred.astype(float) - y.astype(float)
    if metric == "rmse":
        return np.sqrt(np.mean(error**2, axis=-1))
    return np.mean(np.abs(error), axis=-1)  # mae


#: A row of a binary classification as one code: label * 4 + candidate's prediction * 2 +
#: champion's prediction. A resample's confusion counts of both models follow from the counts of
#: the 8 codes, so one small array is resampled instead of three.
_CODES = range(8)
_CONFUSION = {  # (model: 2 = candidate, 1 = champion) -> codes of its (tp, fp, fn)
    2: ((6, 7), (2, 3), (4, 5)),
    1: ((5, 7), (1, 3), (4, 6)),
}


def _from_counts(metric: str, tp: Any, fp: Any, fn: Any) -> Any:
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "precision":
            value = tp / (tp + fp)
        elif metric == "recall":
            value = tp / (tp + fn)
        else:
            value = 2 * tp / (2 * tp + fp + fn)
    return np.nan_to_num(value, nan=0.0)


def _resampled(
    metric: str, sign: float, y: NDArray[Any], cand: NDArray[Any], champ: NDArray[Any]
) -> tuple[tuple[Any, ...], Any, bool]:
    """(samples, statistic, paired) for ``scipy.stats.bootstrap``: the improvement of ``metric``
    (candidate minus champion, times ``sign``) over resampled rows, both models on the same rows.

    The rows are reduced first to what the metric needs of them, so each resample gathers one
    small array: accuracy, the per-row difference of being right (its mean is the improvement);
    precision / recall / F1, the row's code (label and both predictions); RMSE / MAE, both
    models' per-row errors (resampled as pairs).
    """
    import numpy as np

    if metric == "accuracy":
        diff = ((cand == y).astype(np.int8) - (champ == y).astype(np.int8)) * int(sign)

        def mean(d: Any, axis: int = -1) -> Any:
            return np.mean(d, axis=axis)

        return (diff,), mean, False
    if metric in ("precision", "recall", "f1"):
        codes = ((y == 1) * 4 + (cand == 1) * 2 + (champ == 1)).astype(np.int8)

        def improvement(c: Any, axis: int = -1) -> Any:
            counts = {k: np.count_nonzero(c == k, axis=axis) for k in _CODES}
            value = {}
            for model, (tp, fp, fn) in _CONFUSION.items():
                value[model] = _from_counts(
                    metric, sum(counts[k] for k in tp), sum(counts[k] for k in fp), sum(counts[k] for k in fn)
                )
            return sign * (value[2] - value[1])

        return (codes,), improvement, False
    power = 2 if metric == "rmse" else 1
    errors_c = np.abs(cand.astype(float) - y.astype(float)) ** power
    errors_h = np.abs(champ.astype(float) - y.astype(float)) ** power

    def error_improvement(ec: Any, eh: Any, axis: int = -1) -> Any:
        mc, mh = np.mean(ec, axis=axis), np.mean(eh, axis=axis)
        if power == 2:
            mc, mh = np.sqrt(mc), np.sqrt(mh)
        return sign * (mc - mh)

    return (errors_c, errors_h), error_improvement, True


def decide(
    policy: DecisionPolicy,
    y_true: Sequence[Any] | NDArray[Any],
    candidate: Sequence[Any] | NDArray[Any],
    champion: Sequence[Any] | NDArray[Any] | None,
) -> PolicyDecision:
    """Evaluate ``policy`` on the validation rows: labels ``y_true`` and each model's predictions
    (class labels, 1 = positive, for classifiers; values for regressors); ``champion`` None when
    there is none yet."""
    import numpy as np
    from scipy.stats import bootstrap

    y = np.asarray(y_true)
    cand = np.asarray(candidate)
    champ = None if champion is None else np.asarray(champion)
    if y.ndim != 1 or len(y) < 2 or cand.shape != y.shape or (champ is not None and champ.shape != y.shape):
        raise PolicyError("labels and predictions must be 1-D arrays of the same length (at least 2 rows)")
    rng = np.random.default_rng(policy.seed)
    evidence: list[MetricEvidence] = []
    for rule in policy.rules:
        sign = 1.0 if rule.greater_is_better else -1.0
        value = float(_scores(rule.metric, y, cand))
        met = rule.threshold is None or (
            value >= rule.threshold if rule.greater_is_better else value <= rule.threshold
        )
        if champ is None:
            evidence.append(
                MetricEvidence(
                    rule.metric,
                    value,
                    None,
                    None,
                    None,
                    None,
                    met,
                    "no_champion" if met else "threshold_missed",
                )
            )
            continue
        base = float(_scores(rule.metric, y, champ))

        samples, statistic, paired = _resampled(rule.metric, sign, y, cand, champ)
        result = bootstrap(
            samples,
            statistic,
            paired=paired,
            vectorized=True,
            n_resamples=policy.resamples,
            batch=_BATCH,
            confidence_level=policy.confidence,
            method="percentile",
            rng=rng,
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if not met:
            verdict: Any = "threshold_missed"
        elif high < -rule.max_regression:
            verdict = "regression"
        elif low > rule.min_improvement:
            verdict = "win"
        else:
            verdict = "tie"
        evidence.append(
            MetricEvidence(rule.metric, value, base, sign * (value - base), low, high, met, verdict)
        )
    return _outcome(policy, tuple(evidence), len(y))


def _outcome(policy: DecisionPolicy, evidence: tuple[MetricEvidence, ...], rows: int) -> PolicyDecision:
    missed = [e for e in evidence if e.verdict == "threshold_missed"]
    regressed = [e for e in evidence if e.verdict == "regression"]
    pct = f"{policy.confidence:.0%}"
    if (missed or regressed) and policy.allow_auto_reject:
        rejected = [f"{e.metric} {e.candidate:.4g} misses its threshold" for e in missed] + [
            f"{e.metric} is worse than the champion's (improvement {pct} interval "
            f"[{e.low:.4g}, {e.high:.4g}] below -{_rule(policy, e.metric).max_regression:g})"
            for e in regressed
        ]
        return PolicyDecision(AUTO_REJECT, "; ".join(rejected), evidence, policy, rows)
    if missed or regressed:
        return PolicyDecision(
            HUMAN, "a clear regression, but the policy does not reject by itself", evidence, policy, rows
        )
    if all(e.verdict == "win" for e in evidence):
        if policy.allow_auto_approve:
            why = "; ".join(
                f"{e.metric} improves by {e.improvement:.4g} ({pct} interval [{e.low:.4g}, {e.high:.4g}] above "
                f"{_rule(policy, e.metric).min_improvement:g})"
                for e in evidence
            )
            return PolicyDecision(AUTO_APPROVE, why, evidence, policy, rows)
        return PolicyDecision(
            HUMAN, "a clear win, but auto-approval is not allowed here", evidence, policy, rows
        )
    if any(e.verdict == "no_champion" for e in evidence):
        return PolicyDecision(HUMAN, "no champion to compare with: a person decides", evidence, policy, rows)
    ties = [e.metric for e in evidence if e.verdict == "tie"]
    return PolicyDecision(
        HUMAN, f"not a clear win or regression on {', '.join(ties)}: a person decides", evidence, policy, rows
    )


def _rule(policy: DecisionPolicy, metric: str) -> MetricRule:
    return next(r for r in policy.rules if r.metric == metric)
