"""The dashboard's links on the reviewer's card: URL formats, MLflow look-ups and their cache."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from airflow_provider_hlml.gate.state import GateLocation
from airflow_provider_hlml.plugins import views
from airflow_provider_hlml.plugins.app import DashboardData
from airflow_provider_hlml.plugins.card_links import (
    DashboardLinks,
    Lookups,
    MLflowLookups,
    card_for,
    wanted_lookups,
)
from airflow_provider_hlml.plugins.mlflow_client import MLflowReader, MLflowTarget, MLflowUnavailable
from airflow_provider_hlml.plugins.settings import DashboardSettings
from tests.fixtures.processes import free_port

UI = "http://mlflow.example:5000"
TARGET = MLflowTarget(tracking_uri="http://tracking.invalid", ui_url=UI)


def _call(context: dict[str, Any], **airflow: Any) -> dict[str, Any]:
    location = {"dag_id": "churn", "run_id": "manual__1", "task_id": "approve", **airflow}
    return {
        "call_id": f"c-{uuid.uuid4().hex[:6]}",
        "spec": {
            "fn": "model_promotion",
            "kwargs": {"subject": "Promote", "body": "b", "context": context},
            "state": {"hlml": {"approvers": [], "airflow": location}},
        },
        "status": None,
    }


REPORT = {
    "model_name": "churn model/eu",
    "model_version": "3",
    "mlflow_run_id": "run3",
    "validation_run_id": "runval",
    "champion_version": 2,
    "passed": True,
    "metrics": {"accuracy": {"candidate": 0.91, "champion": 0.9, "passed": True}},
}


class TestDashboardLinks:
    LINKS = DashboardLinks(
        airflow_base_path="/af",
        mlflow=TARGET,
        lookups=Lookups(
            experiments={"run3": "7", "run2": "5", "runval": "8"},
            versions={("churn model/eu", "3"): "run3", ("churn model/eu", "2"): "run2"},
        ),
    )

    def test_mlflow_urls_in_the_mlflow_ui_formats(self) -> None:
        links = self.LINKS
        assert links.mlflow_run("run3") == f"{UI}/#/experiments/7/runs/run3"
        assert (
            links.mlflow_model_version("churn model/eu", "3")
            == f"{UI}/#/models/churn%20model%2Feu/versions/3"
        )
        compare = links.mlflow_compare_runs(["run3", "run2"])
        assert compare is not None
        assert compare.startswith(f"{UI}/#/compare-runs?runs=%5B%22run3%22")
        query = parse_qs(urlsplit(compare.split("#", 1)[1]).query)
        assert json.loads(query["runs"][0]) == ["run3", "run2"]
        assert json.loads(query["experiments"][0]) == ["7", "5"]
        # One experiment for both runs: listed once.
        same = DashboardLinks("/af", TARGET, Lookups(experiments={"a": "1", "b": "1"}))
        compare_same = same.mlflow_compare_runs(["a", "b"])
        assert compare_same is not None
        assert json.loads(unquote(compare_same.rsplit("experiments=", 1)[1])) == ["1"]

    def test_nothing_mlflow_does_not_know_is_linked(self) -> None:
        links = self.LINKS
        assert links.mlflow_run("unknown-run") is None
        assert links.mlflow_model_version("churn model/eu", "9") is None
        assert links.mlflow_compare_runs(["run3", "unknown-run"]) is None
        assert links.mlflow_compare_runs(["run3"]) is None
        without = DashboardLinks("/af")
        assert without.mlflow_run("run3") is None
        assert without.mlflow_model_version("churn model/eu", "3") is None
        assert without.mlflow_compare_runs(["run3", "run2"]) is None

    def test_airflow_paths_from_the_ids_never_the_request_url(self) -> None:
        location = GateLocation(
            dag_id="churn", run_id="scheduled__2026-01-01T00:00:00+00:00", task_id="approve", map_index=2,
            ti_url="https://evil.example/",
        )  # fmt: skip
        assert (
            self.LINKS.airflow_task(location)
            == "/af/dags/churn/runs/scheduled__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/approve/mapped/2"
        )
        assert (
            self.LINKS.airflow_dag_run(location)
            == "/af/dags/churn/runs/scheduled__2026-01-01T00%3A00%3A00%2B00%3A00"
        )
        assert self.LINKS.airflow_task(GateLocation(dag_id="churn")) is None
        assert self.LINKS.airflow_dag_run(GateLocation(dag_id="churn")) is None

    def test_card_gets_every_link_and_the_champion_comparison(self) -> None:
        card = card_for(_call(REPORT), self.LINKS)
        assert {lk.kind: lk.url for lk in card.links} == {
            "mlflow_run": f"{UI}/#/experiments/7/runs/run3",
            "model_version": f"{UI}/#/models/churn%20model%2Feu/versions/3",
            "champion_version": f"{UI}/#/models/churn%20model%2Feu/versions/2",
            "compare": self.LINKS.mlflow_compare_runs(["run3", "run2"]),
            "validation_run": f"{UI}/#/experiments/8/runs/runval",
            "airflow_task": "/af/dags/churn/runs/manual__1/tasks/approve",
            "airflow_dag_run": "/af/dags/churn/runs/manual__1",
        }
        assert self.LINKS.champion_run(_call(REPORT)) == "run2"

    def test_hostile_mlflow_ui_url_gives_labels_without_links(self) -> None:
        hostile = MLflowTarget(tracking_uri="http://t", ui_url="javascript:alert(document.cookie)//")
        links = DashboardLinks("/af", hostile, self.LINKS.lookups)
        card = card_for(_call(REPORT), links)
        mlflow_kinds = {"mlflow_run", "model_version", "champion_version", "compare", "validation_run"}
        shown = {lk.kind: lk for lk in card.links}
        assert mlflow_kinds <= set(shown)
        assert all(shown[kind].url is None for kind in mlflow_kinds)
        assert shown["airflow_task"].url == "/af/dags/churn/runs/manual__1/tasks/approve"

    def test_wanted_lookups_read_the_context(self) -> None:
        runs, versions = wanted_lookups(
            [
                _call(REPORT),
                _call({"model_name": "m", "model_version": True, "mlflow_run_id": "x" * 300}),
                _call({"mlflow_run_id": ["not", "an", "id"]}),
                {"spec": "junk"},
            ]
        )
        assert runs == {"run3", "runval"}
        assert versions == {("churn model/eu", "3"), ("churn model/eu", "2")}


class FakeReader:
    """An MLflowReader stand-in that counts what it is asked."""

    def __init__(self, runs: dict[str, str], versions: dict[tuple[str, str], str]) -> None:
        self.target = TARGET
        self.runs, self.versions = runs, versions
        self.asked_runs: list[list[str]] = []
        self.asked_versions: list[list[tuple[str, str]]] = []
        self.down = False

    async def run_experiments(self, run_ids: Iterable[str]) -> dict[str, str | None]:
        if self.down:
            raise MLflowUnavailable("MLflow at http://tracking.invalid unreachable: ConnectError")
        asked = sorted(run_ids)
        self.asked_runs.append(asked)
        return {r: self.runs.get(r) for r in asked}

    async def version_runs(self, versions: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        if self.down:
            raise MLflowUnavailable("MLflow at http://tracking.invalid unreachable: ConnectError")
        asked = sorted(versions)
        self.asked_versions.append(asked)
        return {v: self.versions.get(v) for v in asked}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestMLflowLookups:
    async def test_known_answers_are_kept_missing_ones_asked_again_later(self) -> None:
        clock = Clock()
        lookups = MLflowLookups(clock=clock)
        reader = FakeReader({"r3": "1", "r2": "1"}, {("m", "3"): "r3", ("m", "2"): "r2"})
        found = await lookups.resolve(reader, {"r3", "gone"}, {("m", "3"), ("m", "2"), ("m", "9")})  # type: ignore[arg-type]
        assert found == Lookups(
            experiments={"r3": "1", "r2": "1"}, versions={("m", "3"): "r3", ("m", "2"): "r2"}
        )
        # The champion's run (r2) was looked up after its version.
        assert reader.asked_versions == [[("m", "2"), ("m", "3"), ("m", "9")]]
        assert reader.asked_runs == [["gone", "r2", "r3"]]

        again = await lookups.resolve(reader, {"r3", "gone"}, {("m", "3"), ("m", "2"), ("m", "9")})  # type: ignore[arg-type]
        assert again == found
        assert len(reader.asked_runs) == 1
        assert len(reader.asked_versions) == 1

        clock.now += MLflowLookups.MISSING_SECONDS + 1
        reader.runs["gone"] = "4"
        later = await lookups.resolve(reader, {"r3", "gone"}, {("m", "3"), ("m", "9")})  # type: ignore[arg-type]
        assert later is not None
        assert later.experiments == {"r3": "1", "gone": "4"}
        # Only what MLflow did not know was asked again.
        assert reader.asked_runs[-1] == ["gone"]
        assert reader.asked_versions[-1] == [("m", "9")]

    async def test_mlflow_down_means_no_lookups_for_a_while(self) -> None:
        clock = Clock()
        lookups = MLflowLookups(clock=clock)
        reader = FakeReader({"r3": "1"}, {})
        reader.down = True
        assert await lookups.resolve(reader, {"r3"}, set()) is None  # type: ignore[arg-type]
        reader.down = False
        # Within DOWN_SECONDS MLflow is not asked at all.
        assert await lookups.resolve(reader, {"r3"}, set()) is None  # type: ignore[arg-type]
        assert reader.asked_runs == []
        clock.now += MLflowLookups.DOWN_SECONDS + 1
        found = await lookups.resolve(reader, {"r3"}, set())  # type: ignore[arg-type]
        assert found is not None
        assert found.experiments == {"r3": "1"}

    async def test_the_tables_stay_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(MLflowLookups, "MAX_ENTRIES", 3)
        lookups = MLflowLookups(clock=Clock())
        reader = FakeReader({f"r{i}": "1" for i in range(5)}, {})
        await lookups.resolve(reader, {f"r{i}" for i in range(5)}, set())  # type: ignore[arg-type]
        assert len(lookups._runs) == 3


# ----------------------------------------------------------------------------- a real MLflow server


@pytest.fixture(scope="module")
def seeded(mlflow_server: Any) -> dict[str, str]:
    """A model with v1 (the champion) and v2, from runs in two experiments, and a validation run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    suffix = uuid.uuid4().hex[:8]
    train = client.create_experiment(f"card-train-{suffix}")
    validate = client.create_experiment(f"card-validate-{suffix}")
    model = f"card-model-{suffix}"
    client.create_registered_model(model)
    out = {"url": mlflow_server.url, "model": model, "train": train, "validate": validate}
    for version in ("1", "2"):
        run = client.create_run(train, run_name=f"train-{version}")
        client.set_terminated(run.info.run_id)
        client.create_model_version(model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        out[f"run{version}"] = run.info.run_id
    client.set_registered_model_alias(model, "champion", "1")
    val = client.create_run(validate, run_name="validate-2")
    out["validation_run"] = val.info.run_id
    return out


def _settings() -> DashboardSettings:
    return DashboardSettings(
        approvals_enabled=False,
        approvals_database_url="sqlite://",
        delegate_key="",
        humanlayer_conn_id="card_humanlayer",
        mlflow_conn_id="card_mlflow",
        refresh_seconds=0,
        http_timeout=10.0,
    )


def _report(seeded: dict[str, str], **changes: Any) -> dict[str, Any]:
    return {
        "model_name": seeded["model"],
        "model_version": "2",
        "mlflow_run_id": seeded["run2"],
        "validation_run_id": seeded["validation_run"],
        "champion_version": "1",
        "passed": True,
        "metrics": {"accuracy": {"candidate": 0.91, "champion": 0.9, "passed": True}},
        **changes,
    }


class TestAgainstMLflow:
    async def test_reader_lookups(self, seeded: dict[str, str]) -> None:
        reader = MLflowReader(MLflowTarget(tracking_uri=seeded["url"], ui_url=UI), timeout=60)
        runs = await reader.run_experiments(
            [seeded["run1"], seeded["validation_run"], "f" * 32, "not a run id"]
        )
        assert runs == {
            seeded["run1"]: seeded["train"],
            seeded["validation_run"]: seeded["validate"],
            "f" * 32: None,
            "not a run id": None,
        }
        versions = await reader.version_runs(
            [(seeded["model"], "1"), (seeded["model"], "7"), ("no-such-model", "1"), (seeded["model"], "x")]
        )
        assert versions == {
            (seeded["model"], "1"): seeded["run1"],
            (seeded["model"], "7"): None,
            ("no-such-model", "1"): None,
            (seeded["model"], "x"): None,
        }

    async def test_cards_link_to_what_exists_in_mlflow(
        self, seeded: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ui = seeded["url"]
        monkeypatch.setenv("AIRFLOW_CONN_CARD_MLFLOW", json.dumps({"conn_type": "mlflow", "host": ui}))
        data = DashboardData(_settings())
        first = views.normalize_call(_call(_report(seeded)), airflow_base_path=data.base_path)
        unknown = views.normalize_call(
            _call(_report(seeded, model_version="9", mlflow_run_id="0" * 32, champion_version="8")),
            airflow_base_path=data.base_path,
        )
        await data.with_cards([first, unknown])
        links = {lk["kind"]: lk["url"] for lk in first["links"]}
        assert links["mlflow_run"] == f"{ui}/#/experiments/{seeded['train']}/runs/{seeded['run2']}"
        assert links["model_version"] == f"{ui}/#/models/{seeded['model']}/versions/2"
        assert links["champion_version"] == f"{ui}/#/models/{seeded['model']}/versions/1"
        assert (
            links["validation_run"]
            == f"{ui}/#/experiments/{seeded['validate']}/runs/{seeded['validation_run']}"
        )
        compare = parse_qs(urlsplit(links["compare"].split("#", 1)[1]).query)
        assert json.loads(compare["runs"][0]) == [seeded["run2"], seeded["run1"]]
        assert json.loads(compare["experiments"][0]) == [seeded["train"]]
        # What the links name exists in MLflow: the runs, with the experiment the link names.
        for kind in ("mlflow_run", "validation_run"):
            experiment, run_id = links[kind].split("/#/experiments/", 1)[1].split("/runs/")
            got = httpx.get(f"{ui}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30)
            assert got.status_code == 200
            assert got.json()["run"]["info"]["experiment_id"] == experiment
        # A run and versions MLflow does not know are shown without links.
        shown = {lk["kind"]: lk["url"] for lk in unknown["links"]}
        assert shown["mlflow_run"] is None
        assert shown["model_version"] is None
        assert shown["champion_version"] is None
        assert "compare" not in shown
        assert shown["validation_run"] is not None
        assert shown["airflow_task"] == f"{data.base_path}/dags/churn/runs/manual__1/tasks/approve"

    async def test_mlflow_down_gives_cards_without_mlflow_links(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setenv("AIRFLOW_CONN_CARD_MLFLOW", json.dumps({"conn_type": "mlflow", "host": dead}))
        data = DashboardData(_settings())
        seeded = {"model": "m", "run1": "a" * 32, "run2": "b" * 32, "validation_run": "c" * 32}
        item = views.normalize_call(_call(_report(seeded)), airflow_base_path=data.base_path)
        await data.with_cards([item])
        shown = {lk["kind"]: lk["url"] for lk in item["links"]}
        assert {k: v for k, v in shown.items() if v} == {
            "airflow_task": f"{data.base_path}/dags/churn/runs/manual__1/tasks/approve",
            "airflow_dag_run": f"{data.base_path}/dags/churn/runs/manual__1",
        }
        # The labels are still there, as text.
        assert {"mlflow_run", "model_version", "champion_version", "validation_run"} <= set(shown)
        assert item["metrics"][0]["delta_text"] == "+0.01 (+1.1%)"
        # Without an MLflow connection at all: the same, and no error either.
        monkeypatch.delenv("AIRFLOW_CONN_CARD_MLFLOW")
        other = views.normalize_call(_call(_report(seeded)), airflow_base_path=data.base_path)
        await DashboardData(_settings()).with_cards([other])
        assert [lk["kind"] for lk in other["links"] if lk["url"]] == ["airflow_task", "airflow_dag_run"]
