"""The season example: its plan, its data, and the planted effects realised by real models."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest

from airflow_provider_hlml.examples import season
from airflow_provider_hlml.policy.decision import AUTO_APPROVE, AUTO_REJECT, HUMAN, decide


def first_week_of(kind: str, after: int = 0) -> int:
    return next(w for w, planned in enumerate(season.season_plan()) if planned.kind == kind and w > after)


class TestSeasonPlan:
    def test_the_same_seed_gives_the_same_plan(self) -> None:
        assert season.season_plan(52, 7) == season.season_plan(52, 7)
        assert season.season_plan(52, 7) != season.season_plan(52, 8)

    @pytest.mark.parametrize(("weeks", "counts"), [(52, (18, 17, 17)), (51, (17, 17, 17)), (6, (2, 2, 2))])
    def test_a_third_each_of_wins_regressions_and_ties(self, weeks: int, counts: tuple[int, ...]) -> None:
        kinds = Counter(planned.kind for planned in season.season_plan(weeks))
        assert (kinds["win"], kinds["regression"], kinds["tie"]) == counts

    def test_planted_changes_by_kind(self) -> None:
        for kind, delta in season.season_plan(52):
            if kind == "win":
                assert 0.02 <= delta <= 0.06
            elif kind == "regression":
                assert -0.06 <= delta <= -0.02
            else:
                assert abs(delta) <= 0.005

    def test_the_order_is_shuffled(self) -> None:
        kinds = [planned.kind for planned in season.season_plan(52)]
        assert kinds != (["win", "regression", "tie"] * 18)[:52]

    def test_no_weeks(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            season.season_plan(0)


class TestWeekFrame:
    def test_deterministic_and_different_per_part_and_week(self) -> None:
        a = season.week_frame(3, "validation", rows=500)
        assert a.equals(season.week_frame(3, "validation", rows=500))
        assert not a.equals(season.week_frame(3, "train", rows=500))
        assert not a.equals(season.week_frame(4, "validation", rows=500))
        assert list(a.columns) == [*season.FEATURES, season.TARGET]
        assert set(a[season.TARGET]) == {0, 1}

    def test_labels_follow_the_weeks_line_but_for_the_random_flips(self) -> None:
        noisy = season.week_frame(9, "validation", rows=20_000)
        clean = season.week_frame(9, "validation", rows=20_000, noise=False)
        flipped = float(np.mean(noisy[season.TARGET] != clean[season.TARGET]))
        assert flipped == pytest.approx(season.LABEL_NOISE, abs=0.005)
        assert noisy[season.FEATURES[0]].equals(clean[season.FEATURES[0]])

    def test_a_planted_line_corrupts_the_share_of_labels_its_angle_says(self) -> None:
        week, error = 2, 0.08
        truth = season.week_frame(week, "train", noise=False)
        planted = season.week_frame(
            week, "train", angle=season.boundary_angle(week) - math.pi * error, noise=False
        )
        corrupted = float(np.mean(truth[season.TARGET] != planted[season.TARGET]))
        assert corrupted == pytest.approx(error, abs=0.006)

    def test_the_line_turns_every_week(self) -> None:
        turn = season.boundary_angle(1) - season.boundary_angle(0)
        assert turn == pytest.approx(math.pi * season.DRIFT_PER_WEEK)

    def test_unknown_part(self) -> None:
        with pytest.raises(ValueError, match="part must be"):
            season.week_frame(0, "test")  # type: ignore[arg-type]


class TestWeekNumber:
    def test_weeks_since_the_start_modulo_the_season(self) -> None:
        start = season.SEASON_START
        assert season.week_number(start) == 0
        assert season.week_number(start + dt.timedelta(days=6, hours=23)) == 0
        assert season.week_number(start + dt.timedelta(days=7)) == 1
        assert season.week_number(start + dt.timedelta(weeks=53)) == 1
        assert season.week_number(dt.datetime(2025, 1, 13)) == 1  # naive: UTC

    def test_plan_of_a_run(self) -> None:
        logical = season.SEASON_START + dt.timedelta(weeks=5, days=1)
        planned = season.plan_season_week(params={"week": None}, logical_date=logical)
        assert planned["week"] == 5
        assert (planned["kind"], planned["delta"]) == tuple(season.season_plan()[5])
        assert season.plan_season_week(params={"week": 11}, logical_date=logical)["week"] == 11

        class Run:
            run_after = season.SEASON_START + dt.timedelta(weeks=2)

        assert season.plan_season_week(params={}, logical_date=None, dag_run=Run())["week"] == 2
        with pytest.raises(ValueError, match="from 0 to 51"):
            season.plan_season_week(params={"week": 52})


def accuracy(model: Any, week: int) -> float:
    rows = season.week_frame(week, "validation")
    return float(model.score(rows[list(season.FEATURES)], rows[season.TARGET]))


def outcome(candidate: Any, champion: Any, week: int) -> str:
    rows = season.week_frame(week, "validation")
    features = rows[list(season.FEATURES)]
    decision = decide(
        season.SEASON_POLICY,
        rows[season.TARGET].to_numpy(),
        candidate.predict(features),
        champion.predict(features),
    )
    return decision.outcome


@pytest.fixture(scope="module")
def champion() -> Any:
    """The first week's candidate (no champion before it), the champion of the weeks after."""
    model, planted = season.train_candidate(0, "tie", 0.0, None)
    assert planted.kind == "first"
    assert planted.champion_error is None
    return model


class TestPlantedEffects:
    """Real logistic regressions, trained as the DAG trains them, follow the plan."""

    def test_a_first_candidate_has_the_first_error(self, champion: Any) -> None:
        expected = 1 - season.LABEL_NOISE - season.FIRST_ERROR * (1 - 2 * season.LABEL_NOISE)
        assert accuracy(champion, 0) == pytest.approx(expected, abs=0.01)

    @pytest.mark.parametrize(("kind", "expected"), [("win", AUTO_APPROVE), ("regression", AUTO_REJECT)])
    def test_wins_and_regressions_by_the_planted_margin(
        self, champion: Any, kind: str, expected: str
    ) -> None:
        week = first_week_of(kind)
        delta = season.season_plan()[week].delta
        candidate, planted = season.train_candidate(week, kind, delta, champion.predict)
        assert not planted.clamped
        assert planted.expected_delta == pytest.approx(delta)
        realised = accuracy(candidate, week) - accuracy(champion, week)
        assert realised == pytest.approx(delta, abs=0.01)
        assert outcome(candidate, champion, week) == expected

    def test_a_tie_is_within_noise(self, champion: Any) -> None:
        week = first_week_of("tie")
        delta = season.season_plan()[week].delta
        candidate, _ = season.train_candidate(week, "tie", delta, champion.predict)
        realised = accuracy(candidate, week) - accuracy(champion, week)
        assert abs(realised) < 0.01
        assert outcome(candidate, champion, week) == HUMAN

    def test_the_champion_is_measured_on_the_weeks_data(self, champion: Any) -> None:
        # The champion's line lags the turning one: a week later it is wrong more often.
        later = season.plant_candidate(4, "tie", 0.0, champion.predict)
        assert later.champion_error == pytest.approx(season.FIRST_ERROR + 4 * season.DRIFT_PER_WEEK, abs=0.01)
        # ... and the candidate is planted on the same side of the week's line.
        assert later.angle < season.boundary_angle(4)

    def test_a_champion_on_the_other_side(self) -> None:
        week = 6
        ahead = season.boundary_angle(week) + math.pi * 0.12

        def predict(rows: Any) -> Any:
            return (rows["f0"] * math.cos(ahead) + rows["f1"] * math.sin(ahead) > 0).astype(int)

        planted = season.plant_candidate(week, "win", 0.045, predict)
        assert planted.champion_error == pytest.approx(0.12, abs=0.005)
        assert planted.error == pytest.approx(0.12 - 0.045 / 0.9, abs=0.005)
        assert planted.angle > season.boundary_angle(week)

    def test_a_win_over_a_near_perfect_champion_is_clamped(self) -> None:
        week = 3
        truth = season.boundary_angle(week)

        def perfect(rows: Any) -> Any:
            return (rows["f0"] * math.cos(truth) + rows["f1"] * math.sin(truth) > 0).astype(int)

        planted = season.plant_candidate(week, "win", 0.05, perfect)
        assert planted.clamped
        assert planted.error == season.MIN_ERROR
        assert planted.to_json()["expected_delta"] < 0.05
