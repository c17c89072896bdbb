"""Drift of a deployed model: its inputs and predictions now against its training reference.

Per feature, two measures on the reference rows (what the model was trained on) and the current
rows (what it sees in production):

- the **population stability index** (PSI): the rows are binned (numeric features: quantile bins
  of the reference, ``bins`` of them, with a separate bin for missing values; categorical ones:
  one bin per category), each side's share of rows per bin is floored at :data:`EPSILON` so an
  empty bin stays finite, and the PSI is ``sum((cur - ref) * ln(cur / ref))``, computed as the
  symmetric relative entropy with ``scipy.special.rel_entr``. Rules of thumb: below 0.1 stable,
  0.1-0.2 a moderate shift, above 0.2 a significant one.
- a **two-sample test** of "same distribution": Kolmogorov-Smirnov (``scipy.stats.ks_2samp``) for
  numeric features, chi-squared on the 2 x categories table (``scipy.stats.chi2_contingency``)
  for categorical and low-cardinality ones (at most ``categorical_max_unique`` distinct values).

**A feature is drifted when its PSI is at least** ``psi_threshold`` **and its test's p-value is
below** ``p_value``: the PSI says the shift is large enough to matter, the test says it is not
sampling noise (on large batches a test alone flags trivial shifts; on small ones the PSI alone
flags noise). The model's predictions on both sets are compared the same way. Where the current
rows have labels, the live value of one metric (``sklearn.metrics``) can be checked against a
floor (a ceiling for error metrics) and against its value on the labelled reference rows.

The report is drifted when at least ``min_drifted_features`` features drifted, or the predictions
drifted (with ``include_predictions``), or the live metric broke its rule. Drift only *reports*:
what to do about it (roll back, retrain, accept) is a person's decision
(:mod:`airflow_provider_hlml.workflows.drift`).

No Airflow here; numpy, scipy, pandas and scikit-learn are imported inside the functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd
    from numpy.typing import NDArray

__all__ = [
    "EPSILON",
    "LIVE_METRICS",
    "MAX_FEATURES",
    "DriftError",
    "DriftPolicy",
    "DriftReport",
    "FeatureDrift",
    "LiveMetric",
    "drift_report",
    "population_stability_index",
]

#: The floor of a bin's share of rows, so that an empty bin gives a finite PSI.
EPSILON = 1e-4
#: Metrics the live-metric rule can check, and whether greater is better.
LIVE_METRICS: dict[str, bool] = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "r2": True,
    "rmse": False,
    "mae": False,
}
#: The most features one report compares (a report is XCom and part of a request's context).
MAX_FEATURES = 1000
#: The longest feature name accepted (it appears in metric names, the report and the request).
MAX_FEATURE_NAME = 200
#: The pseudo-feature name of the model's predictions in a report.
PREDICTIONS = "prediction"
_MISSING = "<missing>"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Kind = Literal["numeric", "categorical"]


class DriftError(ValueError):
    """A drift policy or input that cannot be evaluated as given (the message says which)."""


def _show(value: Any) -> str:
    """A bounded ``repr`` of a (possibly hostile) value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(name: str, value: Any, *, low: float, high: float, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (``(low, high]`` with ``low_open``); no bools."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DriftError(f"{name}: a finite number, got {_show(value)}")
    if value < low or value > high or (low_open and value == low):
        bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise DriftError(f"{name}: a number in {bound}, got {_show(value)}")
    return float(value)


def _whole(name: str, value: Any, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DriftError(f"{name}: a whole number from {low} to {high}, got {_show(value)}")
    return value


@dataclass(frozen=True)
class DriftPolicy:
    """When a deployed model counts as drifted.

    :param psi_threshold: a feature's PSI must reach this to count as drifted (default 0.2).
    :param p_value: ... and its two-sample test's p-value must be below this (default 0.01).
    :param bins: quantile bins of a numeric feature's reference values (default 10).
    :param min_drifted_features: how many features must drift for the model to (default 1).
    :param include_predictions: whether drifted predictions alone make the model drifted.
    :param categorical_max_unique: a numeric feature with at most this many distinct values is
        compared as categorical (chi-squared) rather than with Kolmogorov-Smirnov (default 10;
        0 = only non-numeric columns are categorical).
    :param metric: the live metric to check where labels exist (one of :data:`LIVE_METRICS`).
    :param metric_threshold: the live value must reach it (at least; at most for ``rmse`` and
        ``mae``).
    :param metric_max_drop: the live value may be worse than its value on the labelled reference
        rows by at most this (in the metric's units).
    """

    psi_threshold: float = 0.2
    p_value: float = 0.01
    bins: int = 10
    min_drifted_features: int = 1
    include_predictions: bool = True
    categorical_max_unique: int = 10
    metric: str | None = None
    metric_threshold: float | None = None
    metric_max_drop: float | None = None

    def __post_init__(self) -> None:
        _number("psi_threshold", self.psi_threshold, low=0.0, high=100.0, low_open=True)
        _number("p_value", self.p_value, low=0.0, high=1.0, low_open=True)
        _whole("bins", self.bins, low=2, high=100)
        _whole("min_drifted_features", self.min_drifted_features, low=1, high=MAX_FEATURES)
        _whole("categorical_max_unique", self.categorical_max_unique, low=0, high=1000)
        if not isinstance(self.include_predictions, bool):
            raise DriftError(f"include_predictions: true or false, got {_show(self.include_predictions)}")
        if self.metric is not None and (not isinstance(self.metric, str) or self.metric not in LIVE_METRICS):
            raise DriftError(f"metric: one of {', '.join(LIVE_METRICS)}, got {_show(self.metric)}")
        if self.metric_threshold is not None:
            _number("metric_threshold", self.metric_threshold, low=-1e12, high=1e12)
        if self.metric_max_drop is not None:
            _number("metric_max_drop", self.metric_max_drop, low=0.0, high=1e12)
        if self.metric is None and (self.metric_threshold is not None or self.metric_max_drop is not None):
            raise DriftError("metric_threshold / metric_max_drop need metric (which live metric to check)")

    @classmethod
    def from_mapping(cls, raw: Any) -> DriftPolicy:
        """A policy from its JSON/YAML form: the field names as keys, every key optional.

        :raises DriftError: not a mapping, an unknown key, or a value of the wrong type or range.
        """
        if isinstance(raw, DriftPolicy):
            return raw
        if not isinstance(raw, Mapping):
            raise DriftError(f"a drift policy is a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(_show(k) for k in raw if k not in known)
        if unknown:
            raise DriftError(
                f"unknown drift policy keys {', '.join(unknown[:10])}; known: {', '.join(sorted(known))}"
            )
        return cls(**{str(k): v for k, v in raw.items()})

    @property
    def greater_is_better(self) -> bool:
        return LIVE_METRICS.get(self.metric or "", True)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class FeatureDrift:
    """One feature (or the predictions) compared: its PSI, the test, and the verdict.

    :param test: ``ks`` (Kolmogorov-Smirnov) or ``chi2`` (chi-squared), ``None`` when one side
        has no values to test.
    :param statistic: the test's statistic (KS distance, chi-squared).
    :param p_value: the test's p-value.
    """

    name: str
    kind: Kind
    psi: float
    test: Literal["ks", "chi2"] | None
    statistic: float | None
    p_value: float | None
    drifted: bool
    reference_rows: int
    current_rows: int
    missing_reference: float
    missing_current: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "psi": _finite(self.psi),
            "test": self.test,
            "statistic": _finite(self.statistic),
            "p_value": _finite(self.p_value),
            "drifted": self.drifted,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "missing_reference": _finite(self.missing_reference),
            "missing_current": _finite(self.missing_current),
        }


@dataclass(frozen=True)
class LiveMetric:
    """The live metric on the labelled current rows, against the policy's rule.

    :param average: how precision / recall / F1 averaged over classes (``binary`` or ``macro``).
    """

    metric: str
    value: float
    reference_value: float | None
    threshold: float | None
    max_drop: float | None
    breached: bool
    reason: str
    rows: int
    average: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": _finite(self.value),
            "reference_value": _finite(self.reference_value),
            "threshold": self.threshold,
            "max_drop": self.max_drop,
            "breached": self.breached,
            "reason": self.reason,
            "rows": self.rows,
            "average": self.average,
        }


@dataclass(frozen=True)
class DriftReport:
    """Every feature's drift, the predictions', the live metric, the verdict and why."""

    features: tuple[FeatureDrift, ...]
    predictions: FeatureDrift | None
    live_metric: LiveMetric | None
    drifted: bool
    reason: str
    policy: DriftPolicy
    reference_rows: int
    current_rows: int

    @property
    def drifted_features(self) -> tuple[FeatureDrift, ...]:
        return tuple(f for f in self.features if f.drifted)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (no NaN or infinity): what XCom, MLflow's ``drift.json`` and the request carry."""
        return {
            "drifted": self.drifted,
            "reason": self.reason,
            "drifted_features": [f.name for f in self.drifted_features],
            "features": {f.name: f.to_json() for f in self.features},
            "predictions": self.predictions.to_json() if self.predictions is not None else None,
            "live_metric": self.live_metric.to_json() if self.live_metric is not None else None,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "policy": self.policy.to_json(),
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- the statistics
def population_stability_index(reference_counts: Any, current_counts: Any) -> float:
    """The PSI of two histograms over the same bins (counts, not shares).

    Each side's share per bin is floored at :data:`EPSILON`; the PSI is the symmetric relative
    entropy ``sum(rel_entr(cur, ref) + rel_entr(ref, cur)) = sum((cur - ref) * ln(cur / ref))``.
    """
    import numpy as np
    from scipy.special import rel_entr

    ref = np.asarray(reference_counts, dtype=float)
    cur = np.asarray(current_counts, dtype=float)
    if ref.shape != cur.shape or ref.ndim != 1 or ref.sum() <= 0 or cur.sum() <= 0:
        raise DriftError("PSI needs two non-empty histograms over the same bins")
    ref_share = np.maximum(ref / ref.sum(), EPSILON)
    cur_share = np.maximum(cur / cur.sum(), EPSILON)
    return float(np.sum(rel_entr(cur_share, ref_share) + rel_entr(ref_share, cur_share)))


def _numeric_histograms(ref: NDArray[Any], cur: NDArray[Any], bins: int) -> tuple[Any, Any]:
    """Counts per quantile bin of the reference (cut points from the reference only), plus one
    bin of missing values when either side has some."""
    import numpy as np

    ref_present, cur_present = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if len(ref_present):
        cuts = np.unique(np.quantile(ref_present, np.linspace(0, 1, bins + 1))[1:-1])
    else:
        cuts = np.array([], dtype=float)
    size = len(cuts) + 1
    ref_counts = np.bincount(np.searchsorted(cuts, ref_present, side="right"), minlength=size)
    cur_counts = np.bincount(np.searchsorted(cuts, cur_present, side="right"), minlength=size)
    missing = (len(ref) - len(ref_present), len(cur) - len(cur_present))
    if any(missing):
        ref_counts = np.append(ref_counts, missing[0])
        cur_counts = np.append(cur_counts, missing[1])
    return ref_counts, cur_counts


def _category_counts(ref: pd.Series, cur: pd.Series) -> tuple[Any, Any]:
    """Counts per category over the categories of both sides (missing values are one category)."""
    import numpy as np

    def labels(series: pd.Series) -> pd.Series:
        return series.astype(object).where(series.notna(), _MISSING).map(repr)

    ref_counts, cur_counts = labels(ref).value_counts(), labels(cur).value_counts()
    categories = sorted(set(ref_counts.index) | set(cur_counts.index))
    return (
        np.array([int(ref_counts.get(c, 0)) for c in categories]),
        np.array([int(cur_counts.get(c, 0)) for c in categories]),
    )


def _is_categorical(ref: pd.Series, cur: pd.Series, policy: DriftPolicy) -> bool:
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(ref) and pd.api.types.is_numeric_dtype(cur)
    if not numeric or pd.api.types.is_bool_dtype(ref) or pd.api.types.is_bool_dtype(cur):
        return True
    distinct = pd.concat([ref, cur], ignore_index=True).dropna().nunique()
    return bool(distinct <= policy.categorical_max_unique)


def _compare(name: str, ref: pd.Series, cur: pd.Series, policy: DriftPolicy) -> FeatureDrift:
    """PSI and the two-sample test of one column (or the predictions)."""
    import numpy as np
    from scipy.stats import chi2_contingency, ks_2samp

    test: Literal["ks", "chi2"] | None
    statistic: float | None
    p: float | None
    if _is_categorical(ref, cur, policy):
        kind: Kind = "categorical"
        ref_counts, cur_counts = _category_counts(ref, cur)
        psi = population_stability_index(ref_counts, cur_counts)
        if len(ref_counts) < 2:
            # One category on both sides: nothing can differ.
            test, statistic, p = "chi2", 0.0, 1.0
        else:
            result = chi2_contingency(np.vstack([ref_counts, cur_counts]))
            test, statistic, p = "chi2", float(result.statistic), float(result.pvalue)
    else:
        kind = "numeric"
        ref_values = ref.to_numpy(dtype=float, na_value=np.nan)
        cur_values = cur.to_numpy(dtype=float, na_value=np.nan)
        ref_counts, cur_counts = _numeric_histograms(ref_values, cur_values, policy.bins)
        psi = population_stability_index(ref_counts, cur_counts)
        ref_present, cur_present = ref_values[~np.isnan(ref_values)], cur_values[~np.isnan(cur_values)]
        if len(ref_present) and len(cur_present):
            result = ks_2samp(ref_present, cur_present)
            test, statistic, p = "ks", float(result.statistic), float(result.pvalue)
        else:
            test, statistic, p = None, None, None
    if p is None:
        # One side has no values at all: the PSI's missing-value bin alone tells.
        drifted = psi >= policy.psi_threshold
    else:
        drifted = psi >= policy.psi_threshold and p < policy.p_value
    return FeatureDrift(
        name=name,
        kind=kind,
        psi=psi,
        test=test,
        statistic=statistic,
        p_value=p,
        drifted=bool(drifted),
        reference_rows=len(ref),
        current_rows=len(cur),
        missing_reference=float(ref.isna().mean()) if len(ref) else 0.0,
        missing_current=float(cur.isna().mean()) if len(cur) else 0.0,
    )


def _metric_value(metric: str, y_true: NDArray[Any], y_pred: NDArray[Any]) -> tuple[float, str | None]:
    """The metric's value and, for precision / recall / F1, the averaging used."""
    import numpy as np

    try:
        from sklearn import metrics as sk
    except ImportError:  # pragma: no cover - scikit-learn is an optional dependency
        raise DriftError(
            f"the live metric {metric!r} needs scikit-learn (pip install 'airflow-provider-hlml[examples]')"
        ) from None
    if metric == "accuracy":
        return float(sk.accuracy_score(y_true, y_pred)), None
    if metric in ("precision", "recall", "f1"):
        binary = set(np.unique(np.concatenate([y_true, y_pred])).tolist()) <= {0, 1}
        average = "binary" if binary else "macro"
        scorer = {"precision": sk.precision_score, "recall": sk.recall_score, "f1": sk.f1_score}[metric]
        return float(scorer(y_true, y_pred, average=average, zero_division=0)), average
    if metric == "rmse":
        return float(sk.root_mean_squared_error(y_true, y_pred)), None
    if metric == "mae":
        return float(sk.mean_absolute_error(y_true, y_pred)), None
    return float(sk.r2_score(y_true, y_pred)), None


def _live_metric(
    policy: DriftPolicy,
    labels: Any,
    predictions: Any,
    reference_labels: Any,
    reference_predictions: Any,
) -> LiveMetric | None:
    import numpy as np

    metric = policy.metric
    if metric is None or labels is None or predictions is None:
        return None
    labelled = _labelled(labels, predictions, "labels", "current_predictions")
    if labelled is None:
        return None
    y, pred = labelled
    value, average = _metric_value(metric, y, pred)
    reference_value = None
    if reference_labels is not None and reference_predictions is not None:
        reference = _labelled(
            reference_labels, reference_predictions, "reference_labels", "reference_predictions"
        )
        if reference is not None:
            reference_value, _ = _metric_value(metric, *reference)
    better = policy.greater_is_better
    problems: list[str] = []
    notes: list[str] = []
    threshold = policy.metric_threshold
    if threshold is not None:
        met = value >= threshold if better else value <= threshold
        (notes if met else problems).append(
            f"live {metric} {value:.4g} {'meets' if met else 'misses'} its "
            f"{'floor' if better else 'ceiling'} {threshold:g}"
        )
    max_drop = policy.metric_max_drop
    if max_drop is not None and reference_value is not None:
        drop = (reference_value - value) if better else (value - reference_value)
        within = bool(np.round(drop, 12) <= max_drop)
        (notes if within else problems).append(
            f"live {metric} {value:.4g} is {drop:.4g} worse than on the reference rows "
            f"({reference_value:.4g}; at most {max_drop:g} allowed)"
            if drop > 0
            else f"live {metric} {value:.4g} is no worse than on the reference rows ({reference_value:.4g})"
        )
    elif max_drop is not None:
        notes.append(f"no labelled reference rows: the drop of {metric} is not checked")
    if threshold is None and max_drop is None:
        notes.append(f"live {metric} {value:.4g} (no rule)")
    return LiveMetric(
        metric=metric,
        value=value,
        reference_value=reference_value,
        threshold=threshold,
        max_drop=max_drop,
        breached=bool(problems),
        reason="; ".join(problems or notes),
        rows=len(y),
        average=average,
    )


def _labelled(
    labels: Any, predictions: Any, labels_name: str, predictions_name: str
) -> tuple[NDArray[Any], NDArray[Any]] | None:
    """(labels, predictions) of the rows that have a label; None when no row has one."""
    import pandas as pd

    y, pred = _one_d(labels, labels_name), _one_d(predictions, predictions_name)
    if len(y) != len(pred):
        raise DriftError(f"{labels_name} ({len(y)} rows) and {predictions_name} ({len(pred)}) must match")
    present = ~pd.isna(y)
    if not present.any():
        return None
    y, pred = y[present], pred[present]
    if y.dtype == object:
        y = pd.Series(y).infer_objects().to_numpy()
    return y, pred


def _one_d(values: Any, name: str) -> NDArray[Any]:
    """``values`` (a list, array, series or one-column frame) as a 1-D array."""
    import numpy as np

    array = np.asarray(getattr(values, "values", values))
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise DriftError(f"{name or 'values'}: one value per row (1-D), got shape {array.shape}")
    return array


def _feature_names(
    reference: pd.DataFrame, current: pd.DataFrame, features: Sequence[Any] | None
) -> list[str]:
    if isinstance(features, str):
        raise DriftError("features: a list of column names, not one string")
    names = list(reference.columns) if features is None else list(features)
    if not names:
        raise DriftError("no features to compare")
    if len(names) > MAX_FEATURES:
        raise DriftError(f"{len(names)} features: at most {MAX_FEATURES} (choose them with features=)")
    for name in names:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_FEATURE_NAME:
            raise DriftError(
                f"feature name {str(name)[:60]!r}: a non-empty string of at most {MAX_FEATURE_NAME} characters"
            )
        if _CONTROL.search(name):
            raise DriftError(f"feature name {name[:60]!r} contains control characters")
    if len(set(names)) != len(names):
        raise DriftError("feature names must be unique")
    for frame, side in ((reference, "reference"), (current, "current")):
        absent = [n for n in names if n not in frame.columns]
        if absent:
            raise DriftError(f"the {side} rows have no column {absent[0][:60]!r} ({len(absent)} missing)")
    return names


def _verdict(
    policy: DriftPolicy,
    features: Sequence[FeatureDrift],
    predictions: FeatureDrift | None,
    live: LiveMetric | None,
) -> tuple[bool, str]:
    drifted = [f for f in features if f.drifted]
    parts: list[str] = []
    feature_drift = len(drifted) >= policy.min_drifted_features
    if drifted:
        listed = ", ".join(f"{f.name} (PSI {f.psi:.3g}, p={_p(f.p_value)})" for f in drifted[:10])
        more = f" and {len(drifted) - 10} more" if len(drifted) > 10 else ""
        parts.append(f"{len(drifted)} of {len(features)} features drifted: {listed}{more}")
        if not feature_drift:
            parts[-1] += f" (fewer than the {policy.min_drifted_features} needed)"
    else:
        parts.append(f"none of {len(features)} features drifted")
    prediction_drift = bool(predictions is not None and predictions.drifted and policy.include_predictions)
    if predictions is not None:
        state = "drifted" if predictions.drifted else "are stable"
        parts.append(f"predictions {state} (PSI {predictions.psi:.3g}, p={_p(predictions.p_value)})")
    metric_breach = bool(live is not None and live.breached)
    if live is not None:
        parts.append(live.reason)
    drifted_now = feature_drift or prediction_drift or metric_breach
    return drifted_now, ("drift: " if drifted_now else "no drift: ") + "; ".join(parts)


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    reference_predictions: Any = None,
    current_predictions: Any = None,
    labels: Any = None,
    reference_labels: Any = None,
    policy: DriftPolicy | Mapping[str, Any] | None = None,
) -> DriftReport:
    """Compare ``current`` rows with the ``reference`` rows under ``policy``.

    A feature is drifted when its PSI is at least ``policy.psi_threshold`` and its two-sample
    test's p-value is below ``policy.p_value`` (when one side has no values at all, the PSI
    alone decides).

    :param reference: the rows the model was trained on (a pandas DataFrame).
    :param current: the rows it sees now.
    :param features: the columns to compare; default every column of ``reference``.
    :param reference_predictions: the model's predictions on ``reference`` (one per row).
    :param current_predictions: its predictions on ``current``.
    :param labels: the true labels of the ``current`` rows, where they exist (live metric).
    :param reference_labels: the labels of the ``reference`` rows (the metric's reference value).
    :param policy: a :class:`DriftPolicy` or its mapping; default ``DriftPolicy()``.
    :raises DriftError: unusable input (a missing column, bad names, too few rows, ...).
    """
    import pandas as pd

    policy = DriftPolicy() if policy is None else DriftPolicy.from_mapping(policy)
    for frame, side in ((reference, "reference"), (current, "current")):
        if not isinstance(frame, pd.DataFrame):
            raise DriftError(f"{side}: a pandas DataFrame, got {type(frame).__name__}")
        if len(frame) < 2:
            raise DriftError(f"{side}: at least 2 rows, got {len(frame)}")
    names = _feature_names(reference, current, features)
    if policy.min_drifted_features > len(names):
        raise DriftError(
            f"min_drifted_features {policy.min_drifted_features} exceeds the {len(names)} features compared: "
            "the features could never count as drifted"
        )
    compared = tuple(_compare(name, reference[name], current[name], policy) for name in names)
    predictions = None
    if reference_predictions is not None and current_predictions is not None:
        ref_pred = _one_d(reference_predictions, "reference_predictions")
        cur_pred = _one_d(current_predictions, "current_predictions")
        if len(ref_pred) != len(reference) or len(cur_pred) != len(current):
            raise DriftError("predictions: one per row of the reference and of the current rows")
        predictions = _compare(PREDICTIONS, pd.Series(ref_pred), pd.Series(cur_pred), policy)
    live = _live_metric(policy, labels, current_predictions, reference_labels, reference_predictions)
    drifted, reason = _verdict(policy, compared, predictions, live)
    return DriftReport(
        features=compared,
        predictions=predictions,
        live_metric=live,
        drifted=drifted,
        reason=reason,
        policy=policy,
        reference_rows=len(reference),
        current_rows=len(current),
    )
