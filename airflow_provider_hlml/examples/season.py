"""A season of weekly retrains with planted improvements, regressions and ties.

The season's plan (:func:`season_plan`) gives every week a planted change of the candidate's
accuracy relative to the champion of that week: a clear win (+2 to +6 points), a clear regression
(-2 to -6) or a tie (-0.5 to +0.5), a third each, in a shuffled order fixed by the seed. The
benchmark ``benchmarks/decision_policy.py`` scores the decision policy against it, and the example
DAG ``dags/hlml_season.py`` trains, validates and gates a real candidate every week.

The world of the DAG (:func:`week_frame`): four standard-normal features; the label says on which
side of a line through the origin of the ``f0`` / ``f1`` plane a row lies, and 5 % of the labels
are flipped at random (nobody is ever 100 % right). The line turns a little every week
(:data:`DRIFT_PER_WEEK`), so a model loses accuracy as it ages, as real models do under drift.
A linear model whose line is off the week's by an angle ``a`` (radians) is wrong, before the
random flips, on a share ``a / pi`` of the rows: its accuracy is set by its angle.

A week's candidate (:func:`train_candidate`) is a scikit-learn logistic regression trained on
that week's rows whose labels are corrupted by a planted rate: the labels of the rows between
the week's line and a planted line, turned from it by the angle that makes the candidate's error
the champion's (measured on fresh rows of the week) minus the planted change, on the same side
as the champion's line, so the two models disagree only where the plan says they differ. A first
candidate (no champion yet) is planted with :data:`FIRST_ERROR`.

No data is downloaded and nothing is random between machines: every row follows from the seed
and the week. numpy, pandas, scikit-learn and MLflow are imported inside the functions, so
importing this module at DAG-parse time costs nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from airflow_provider_hlml.policy.decision import DecisionPolicy, MetricRule

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from numpy.typing import NDArray

__all__ = [
    "SEASON_POLICY",
    "PlannedCandidate",
    "PlannedWeek",
    "boundary_angle",
    "plan_season_week",
    "plant_candidate",
    "season_plan",
    "season_validation_data",
    "train_candidate",
    "train_season_candidate",
    "week_frame",
    "week_number",
]

Part = Literal["train", "validation", "calibration"]

TARGET = "label"
FEATURES: tuple[str, ...] = ("f0", "f1", "f2", "f3")
SEASON_WEEKS = 52
DEFAULT_SEED = 2026
#: The Monday week 0 of the season starts on; a run's week counts from it (modulo the season).
SEASON_START = dt.datetime(2025, 1, 6, tzinfo=dt.timezone.utc)
#: Rows of a week's training and validation data, and of the fresh rows the champion is measured on.
TRAIN_ROWS = 20_000
VALIDATION_ROWS = 5_000
CALIBRATION_ROWS = 50_000
#: The share of labels flipped at random, in every part (the world's own noise).
LABEL_NOISE = 0.05
#: How far the true line turns each week, as the share of rows it moves across (1.5 %: a model a
#: week older is that much more often wrong before the random flips).
DRIFT_PER_WEEK = 0.015
#: The planted error (before the random flips) of a candidate with no champion to compare with.
FIRST_ERROR = 0.10
#: The bounds of a planted error: a win cannot plant a candidate better than the best a linear
#: model learns from these rows, nor a regression one worse than a coin.
MIN_ERROR = 0.01
MAX_ERROR = 0.45

#: The decision policy of the season (the benchmark's and the example DAG's): auto-approve a clear
#: win of more than one accuracy point, auto-reject a clear regression of more than one point.
SEASON_POLICY = DecisionPolicy(
    rules=(MetricRule("accuracy", threshold=0.6, min_improvement=0.01, max_regression=0.01),),
    name="champion-margin",
    version=1,
    resamples=1000,
    seed=0,
)

_PARTS: dict[str, int] = {"train": 0, "validation": 1, "calibration": 2}


class PlannedWeek(NamedTuple):
    """One week of the plan: its kind and the planted change of accuracy (candidate minus champion)."""

    kind: str
    delta: float


def season_plan(weeks: int = SEASON_WEEKS, seed: int = DEFAULT_SEED) -> list[PlannedWeek]:
    """The planted change per week: a third each of wins (+0.02 to +0.06), regressions (-0.02 to
    -0.06) and ties (-0.005 to +0.005), in an order shuffled by ``seed``; the same for the same
    arguments."""
    import numpy as np

    if weeks < 1:
        raise ValueError(f"weeks must be at least 1, got {weeks}")
    rng = np.random.default_rng(seed)
    kinds = ["win", "regression", "tie"] * (weeks // 3 + 1)
    plan = []
    for kind in kinds[:weeks]:
        if kind == "win":
            plan.append(PlannedWeek(kind, float(rng.uniform(0.02, 0.06))))
        elif kind == "regression":
            plan.append(PlannedWeek(kind, float(-rng.uniform(0.02, 0.06))))
        else:
            plan.append(PlannedWeek(kind, float(rng.uniform(-0.005, 0.005))))
    order = rng.permutation(weeks)
    return [plan[i] for i in order]


def week_number(when: dt.datetime, *, start: dt.datetime = SEASON_START, weeks: int = SEASON_WEEKS) -> int:
    """The week of the season ``when`` falls in: whole weeks since ``start``, modulo ``weeks``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return ((when - start).days // 7) % weeks


def boundary_angle(week: int) -> float:
    """The direction (radians) of the week's true line in the ``f0`` / ``f1`` plane."""
    return math.pi * (0.25 + DRIFT_PER_WEEK * week)


def _side_labels(features: NDArray[Any], angle: float) -> NDArray[np.int64]:
    import numpy as np

    return (features[:, 0] * math.cos(angle) + features[:, 1] * math.sin(angle) > 0).astype(np.int64)


def week_frame(
    week: int,
    part: Part = "validation",
    *,
    angle: float | None = None,
    rows: int | None = None,
    noise: bool = True,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """A week's rows: the features and the ``label``; the same for the same arguments.

    :param week: the week of the season (its true line, and its rows' seed).
    :param part: ``train``, ``validation`` or ``calibration`` (different rows of the same week).
    :param angle: label the rows by this line instead of the week's true one (a corrupted
        training set); the random flips apply all the same.
    :param rows: how many (default by part: 20,000 / 5,000 / 50,000).
    :param noise: flip :data:`LABEL_NOISE` of the labels at random.
    :param seed: the season's seed.
    """
    import numpy as np
    import pandas as pd

    if part not in _PARTS:
        raise ValueError(f"part must be one of {sorted(_PARTS)}, got {part!r}")
    count = (
        rows or {"train": TRAIN_ROWS, "validation": VALIDATION_ROWS, "calibration": CALIBRATION_ROWS}[part]
    )
    rng = np.random.default_rng([seed, week, _PARTS[part]])
    features = rng.standard_normal((count, len(FEATURES)))
    labels = _side_labels(features, boundary_angle(week) if angle is None else angle)
    flips = rng.random(count) < LABEL_NOISE
    if noise:
        labels = np.where(flips, 1 - labels, labels)
    frame = pd.DataFrame(features, columns=list(FEATURES))
    frame[TARGET] = labels
    return frame


@dataclass(frozen=True)
class PlannedCandidate:
    """How a week's candidate is planted.

    :param week: the week of the season.
    :param kind: the plan's kind (``win``, ``regression``, ``tie``; ``first`` without a champion).
    :param delta: the planted change of accuracy on the week's rows (with the random flips).
    :param error: the candidate's planted error before the random flips.
    :param angle: the line its training labels follow (radians).
    :param champion_error: the champion's error before the random flips, measured on fresh rows
        of the week (None without a champion).
    :param clamped: whether the planted error hit :data:`MIN_ERROR` / :data:`MAX_ERROR`, so the
        realised change is smaller than planned.
    """

    week: int
    kind: str
    delta: float
    error: float
    angle: float
    champion_error: float | None
    clamped: bool

    @property
    def expected_delta(self) -> float | None:
        """The change of accuracy (with the random flips) this plant gives, None without a champion."""
        if self.champion_error is None:
            return None
        return (self.champion_error - self.error) * (1 - 2 * LABEL_NOISE)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "expected_delta": self.expected_delta}


def plant_candidate(
    week: int,
    kind: str,
    delta: float,
    champion: Callable[[pd.DataFrame], Any] | None = None,
    *,
    seed: int = DEFAULT_SEED,
) -> PlannedCandidate:
    """Where to plant the week's candidate so its accuracy is the champion's plus ``delta``.

    :param champion: the champion's ``predict`` (rows of :data:`FEATURES` -> 0/1 labels), or None
        when there is none yet.
    """
    import numpy as np

    truth = boundary_angle(week)
    if champion is None:
        # Behind the turning line, like every later candidate (so drift adds to its error).
        return PlannedCandidate(week, "first", delta, FIRST_ERROR, truth - math.pi * FIRST_ERROR, None, False)
    fresh = week_frame(week, "calibration", noise=False, seed=seed)
    features = fresh[list(FEATURES)]
    predicted = np.asarray(champion(features)).reshape(-1).astype(np.int64)
    champion_error = float(np.mean(predicted != fresh[TARGET].to_numpy()))
    # Which side of the week's line the champion's line lies on: the one it agrees with more.
    behind = _side_labels(features.to_numpy(), truth - math.pi * champion_error)
    ahead = _side_labels(features.to_numpy(), truth + math.pi * champion_error)
    side = 1.0 if np.mean(predicted == ahead) > np.mean(predicted == behind) else -1.0
    wanted = champion_error - delta / (1 - 2 * LABEL_NOISE)
    error = min(max(wanted, MIN_ERROR), MAX_ERROR)
    return PlannedCandidate(
        week,
        kind,
        delta,
        error,
        truth + side * math.pi * error,
        champion_error,
        clamped=not math.isclose(error, wanted),
    )


def train_candidate(
    week: int,
    kind: str,
    delta: float,
    champion: Callable[[pd.DataFrame], Any] | None = None,
    *,
    seed: int = DEFAULT_SEED,
) -> tuple[Any, PlannedCandidate]:
    """A week's candidate, a scikit-learn logistic regression trained on the week's rows with the
    labels of :func:`plant_candidate`'s line, and how it was planted."""
    from sklearn.linear_model import LogisticRegression

    planted = plant_candidate(week, kind, delta, champion, seed=seed)
    train = week_frame(week, "train", angle=planted.angle, seed=seed)
    model = LogisticRegression(max_iter=1000)
    model.fit(train[list(FEATURES)], train[TARGET])
    return model, planted


# --- The example DAG's callables ------------------------------------------------------------------


def plan_season_week(
    params: Mapping[str, Any] | None = None,
    logical_date: dt.datetime | None = None,
    dag_run: Any = None,
    *,
    weeks: int = SEASON_WEEKS,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """The week a DAG run trains for and its plan: the ``week`` param when given, else the week of
    the run's logical date (its ``run_after`` for a run without one).

    :return: ``{"week", "kind", "delta", "seed", "weeks"}``.
    """
    chosen = (params or {}).get("week")
    if chosen is None:
        when = logical_date or getattr(dag_run, "run_after", None) or dt.datetime.now(dt.timezone.utc)
        week = week_number(when, weeks=weeks)
    else:
        week = int(chosen)
        if not 0 <= week < weeks:
            raise ValueError(f"week must be from 0 to {weeks - 1}, got {week}")
    planned = season_plan(weeks, seed)[week]
    return {"week": week, "kind": planned.kind, "delta": planned.delta, "seed": seed, "weeks": weeks}


def _planned_week(context: Mapping[str, Any] | None, plan_task_id: str) -> dict[str, Any]:
    planned = context["ti"].xcom_pull(task_ids=plan_task_id) if context is not None else None
    if not isinstance(planned, Mapping) or "week" not in planned:
        raise ValueError(f"no week plan from task {plan_task_id!r} (it returns plan_season_week())")
    return dict(planned)


def _champion_predict(model_name: str, alias: str) -> Callable[[pd.DataFrame], Any] | None:
    """The ``predict`` of the version holding ``alias`` (the tracking server MLflow points at), or
    None when the alias is not set."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from airflow_provider_hlml.operators.mlflow import quiet_skops_module_scan

    try:
        holder = mlflow.MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    with quiet_skops_module_scan():
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{holder.version}")
    return model.predict


def train_season_candidate(
    context: Mapping[str, Any] | None = None,
    *,
    model_name: str,
    alias: str = "champion",
    plan_task_id: str = "plan_week",
) -> Any:
    """Training stage of the season DAG (an ``MLflowTrainOperator`` callable): the week's candidate,
    planted against the version holding ``alias`` now.

    :return: a ``TrainResult``: accuracy on the week's validation rows, the plant as params, the
        model and an input example.
    """
    from airflow_provider_hlml.operators.mlflow import TrainResult

    planned = _planned_week(context, plan_task_id)
    seed = int(planned.get("seed", DEFAULT_SEED))
    champion = _champion_predict(model_name, alias)
    model, planted = train_candidate(
        planned["week"], planned["kind"], float(planned["delta"]), champion, seed=seed
    )
    validation = week_frame(planned["week"], "validation", seed=seed)
    accuracy = float(model.score(validation[list(FEATURES)], validation[TARGET]))
    params = {
        "season_week": planned["week"],
        "planted_kind": planted.kind,
        "planted_delta": round(planted.delta, 6),
        "planted_error": round(planted.error, 6),
        "planted_clamped": planted.clamped,
    }
    metrics = {"accuracy": accuracy}
    if planted.champion_error is not None:
        metrics["champion_error_clean"] = planted.champion_error
    return TrainResult(
        metrics=metrics, model=model, params=params, input_example=validation[list(FEATURES)].head(5)
    )


def season_validation_data(
    context: Mapping[str, Any] | None = None, *, plan_task_id: str = "plan_week"
) -> pd.DataFrame:
    """Validation stage of the season DAG: the week's validation rows (features and ``label``)."""
    planned = _planned_week(context, plan_task_id)
    return week_frame(planned["week"], "validation", seed=int(planned.get("seed", DEFAULT_SEED)))
