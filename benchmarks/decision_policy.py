"""The promotion decision policy over a season of weekly retrains with known ground truth.

Two parts:

* **Season**: 52 weekly candidates, each scored against the champion of that week on 10,000 fresh
  validation rows. Each candidate's true accuracy is planted relative to the champion's: clear
  improvements (+2 to +6 points), clear regressions (-2 to -6) and ties (-0.5 to +0.5), in a fixed
  shuffled order (the season's plan, ``airflow_provider_hlml.examples.season.season_plan``, which
  the example DAG ``dags/hlml_season.py`` trains real candidates for), against a champion whose accuracy on each week's data drifts with the season
  (0.74-0.82). Rows have a shared difficulty, so the two models' errors are correlated as real
  models' are (which is what a paired test exploits). Printed: the human-intervention rate,
  auto-approvals and auto-rejections, and the wrong ones (an auto-approval of a candidate that is
  not truly better by the policy's margin; an auto-rejection of one that is not truly worse by
  its allowed regression). Targets: wrong auto-approvals 0.
* **Cost**: the policy's added time in the validation stage for 10,000 rows and 1,000 bootstrap
  resamples (the two models' predictions + ``decide``), against the stage's own work,
  ``mlflow.models.evaluate`` of the candidate on the same rows (a scikit-learn model logged to a
  local MLflow store), medians over ``--repeats`` interleaved runs. Target: under 10 % of it.

Usage: ``python benchmarks/decision_policy.py [--weeks 52] [--rows 10000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

from airflow_provider_hlml.examples.season import SEASON_POLICY, season_plan  # noqa: E402
from airflow_provider_hlml.policy.decision import AUTO_APPROVE, AUTO_REJECT, HUMAN, decide  # noqa: E402

#: The season's policy (the example DAG ``dags/hlml_season.py`` decides with the same one).
POLICY = SEASON_POLICY


def predictions(y: Any, difficulty: Any, accuracy: float, rng: Any) -> Any:
    """A model right on the rows easier than its accuracy, with some noise of its own."""
    import numpy as np

    own = rng.normal(scale=0.05, size=len(y))
    correct = (difficulty + own) < accuracy
    return np.where(correct, y, 1 - y)


def run_season(weeks: int, rows: int, seed: int) -> dict[str, Any]:
    import math

    import numpy as np

    rng = np.random.default_rng(seed + 1)
    counts = {AUTO_APPROVE: 0, AUTO_REJECT: 0, HUMAN: 0}
    wrong_approvals = wrong_rejections = 0
    by_kind: dict[str, dict[str, int]] = {}
    seconds = []
    for week, (kind, delta) in enumerate(season_plan(weeks, seed)):
        # The champion's accuracy on this week's data drifts with the season (0.74-0.82): the
        # retrains of a season hover around one level of quality rather than climbing for ever.
        champion_accuracy = 0.78 + 0.04 * math.sin(2 * math.pi * week / weeks)
        candidate_accuracy = champion_accuracy + delta
        y = rng.integers(0, 2, rows)
        difficulty = rng.random(rows)
        champion = predictions(y, difficulty, champion_accuracy, rng)
        candidate = predictions(y, difficulty, candidate_accuracy, rng)
        started = time.perf_counter()
        decision = decide(POLICY, y, candidate, champion)
        seconds.append(time.perf_counter() - started)
        counts[decision.outcome] += 1
        by_kind.setdefault(kind, {AUTO_APPROVE: 0, AUTO_REJECT: 0, HUMAN: 0})[decision.outcome] += 1
        rule = POLICY.rules[0]
        if decision.outcome == AUTO_APPROVE and delta < rule.min_improvement:
            wrong_approvals += 1
        if decision.outcome == AUTO_REJECT and delta > -rule.max_regression:
            wrong_rejections += 1
    return {
        "counts": counts,
        "by_kind": by_kind,
        "wrong_approvals": wrong_approvals,
        "wrong_rejections": wrong_rejections,
        "decide_median": statistics.median(seconds),
    }


def stage_cost(rows: int, repeats: int) -> dict[str, float]:
    """Medians of the stage's own evaluation and of the policy's added work, interleaved."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=2 * rows, n_features=20, n_informative=8, random_state=0)
    columns = [f"f{i}" for i in range(x.shape[1])]
    train, valid = pd.DataFrame(x[:rows], columns=columns), pd.DataFrame(x[rows:], columns=columns)
    candidate = LogisticRegression(max_iter=500).fit(train, y[:rows])
    champion = LogisticRegression(max_iter=500, C=0.01).fit(train.iloc[:, :10], y[:rows])
    store = Path(tempfile.mkdtemp(prefix="hlml-bench-policy-"))
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("decision-policy-bench")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(candidate, name="model", input_example=valid.head(3))
    data = valid.assign(label=y[rows:])
    evaluate_s, policy_s = [], []
    for i in range(repeats + 1):
        order = ("evaluate", "policy") if i % 2 == 0 else ("policy", "evaluate")
        for part in order:
            started = time.perf_counter()
            if part == "evaluate":
                with mlflow.start_run():
                    mlflow.models.evaluate(
                        info.model_uri, data, targets="label", model_type="classifier", evaluators=["default"]
                    )
            else:
                decide(
                    POLICY,
                    np.asarray(y[rows:]),
                    candidate.predict(valid),
                    champion.predict(valid.iloc[:, :10]),
                )
            took = time.perf_counter() - started
            if i > 0:  # the first round warms up both
                (evaluate_s if part == "evaluate" else policy_s).append(took)
    return {"evaluate": statistics.median(evaluate_s), "policy": statistics.median(policy_s)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--parts", default="season,cost")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    print(
        f"policy {POLICY.principal}: accuracy threshold {POLICY.rules[0].threshold}, min improvement "
        f"{POLICY.rules[0].min_improvement}, max regression {POLICY.rules[0].max_regression}, "
        f"{POLICY.resamples} paired bootstrap resamples, {POLICY.confidence:.0%} intervals"
    )
    if "season" in parts:
        season = run_season(args.weeks, args.rows, args.seed)
        counts = season["counts"]
        print(
            f"season of {args.weeks} weekly candidates, {args.rows:,} validation rows each: "
            f"human {counts[HUMAN]} ({counts[HUMAN] / args.weeks:.0%} human-intervention rate), "
            f"auto-approved {counts[AUTO_APPROVE]}, auto-rejected {counts[AUTO_REJECT]}"
        )
        for kind, outcome in sorted(season["by_kind"].items()):
            print(f"  planted {kind:<10} {outcome}")
        print(
            f"wrong auto-approvals: {season['wrong_approvals']} (target 0); "
            f"wrong auto-rejections: {season['wrong_rejections']}; "
            f"decide() median {season['decide_median'] * 1000:.0f} ms"
        )
    if "cost" in parts:
        cost = stage_cost(args.rows, args.repeats)
        share = cost["policy"] / cost["evaluate"]
        print(
            f"validation stage, {args.rows:,} rows: mlflow.models.evaluate {cost['evaluate']:.2f} s, "
            f"policy (2 x predict + decide, {POLICY.resamples} resamples) {cost['policy']:.3f} s: "
            f"{share:.1%} of the stage's evaluation (target < 10 %)"
        )
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
