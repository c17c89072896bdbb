"""The dashboard's links on the reviewer's card: MLflow UI pages and Airflow UI paths.

The card (:mod:`airflow_provider_hlml.review.card`) asks a
:class:`~airflow_provider_hlml.review.card.LinkMaker` for every link; the dashboard's is
:class:`DashboardLinks`. It answers from ids only: Airflow paths from the ids the gate recorded
(never from the request's ``ti_url``), MLflow URLs from the MLflow connection's UI URL and what
MLflow said about the runs and model versions the request names. A run's page needs its
experiment id and the comparison with the champion needs the champion version's run, so those are
looked up before the cards are built, in one round per page (:class:`MLflowLookups`, which keeps
the answers: a run's experiment and a version's run never change). A run or version MLflow does
not know gets no link; MLflow down, or no MLflow connection, means cards without MLflow links,
never an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from airflow_provider_hlml.gate.state import GateLocation
from airflow_provider_hlml.plugins.mlflow_client import MLflowReader, MLflowTarget, MLflowUnavailable
from airflow_provider_hlml.review.card import Card, build_card

__all__ = ["DashboardLinks", "Lookups", "MLflowLookups", "card_for", "wanted_lookups"]

#: Longer ids in a request are not looked up (MLflow's run ids are 32 hex digits).
MAX_ID_LENGTH = 256


def _id(value: Any) -> str | None:
    """A run id, model name or version as the card reads it from a request's context."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value and len(value) <= MAX_ID_LENGTH:
        return value
    return None


def _context(call: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = call.get("spec")
    kwargs = spec.get("kwargs") if isinstance(spec, Mapping) else None
    context = kwargs.get("context") if isinstance(kwargs, Mapping) else None
    return context if isinstance(context, Mapping) else {}


def _model_versions(context: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(model name, candidate version, champion version) of a request's context."""
    return (
        _id(context.get("model_name")),
        _id(context.get("model_version")),
        _id(context.get("champion_version")),
    )


def wanted_lookups(calls: Iterable[Mapping[str, Any]]) -> tuple[set[str], set[tuple[str, str]]]:
    """The MLflow runs (``mlflow_run_id``, ``validation_run_id``) and registered model versions
    (the candidate and the champion) the cards of ``calls`` link to."""
    runs: set[str] = set()
    versions: set[tuple[str, str]] = set()
    for call in calls:
        context = _context(call)
        for key in ("mlflow_run_id", "validation_run_id"):
            run_id = _id(context.get(key))
            if run_id:
                runs.add(run_id)
        name, version, champion = _model_versions(context)
        if name:
            versions.update((name, v) for v in (version, champion) if v)
    return runs, versions


@dataclass(frozen=True)
class Lookups:
    """What MLflow said: run -> experiment id, and (model, version) -> run id (``""``: no run)."""

    experiments: Mapping[str, str] = field(default_factory=dict)
    versions: Mapping[tuple[str, str], str] = field(default_factory=dict)


class MLflowLookups:
    """Run -> experiment and model version -> run look-ups against MLflow, kept between pages.

    What MLflow knows is kept for good (it does not change); what it did not know is asked again
    after :attr:`MISSING_SECONDS`. After a failure (unreachable, 5xx) nothing is asked for
    :attr:`DOWN_SECONDS`: pages keep loading at once, with cards without MLflow links.

    :param clock: seconds, monotonic (tests pass their own).
    """

    MISSING_SECONDS = 60.0
    DOWN_SECONDS = 30.0
    #: Entries kept per table; the oldest go first.
    MAX_ENTRIES = 10_000
    #: Ids looked up per page at most (a page shows a few dozen requests).
    MAX_LOOKUPS = 200

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._runs: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._versions: dict[tuple[str, str, str], tuple[str | None, float]] = {}
        self._down_until: dict[str, float] = {}

    def _fresh(self, table: Mapping[Any, tuple[str | None, float]], key: Any, now: float) -> bool:
        entry = table.get(key)
        return entry is not None and entry[1] > now

    def _keep(self, table: dict[Any, tuple[str | None, float]], found: Mapping[Any, str | None]) -> None:
        now = self._clock()
        for key, value in found.items():
            table.pop(key, None)
            table[key] = (value, float("inf") if value is not None else now + self.MISSING_SECONDS)
        for old in list(table)[: max(0, len(table) - self.MAX_ENTRIES)]:
            del table[old]

    async def resolve(
        self, reader: MLflowReader, run_ids: Iterable[str], versions: Iterable[tuple[str, str]]
    ) -> Lookups | None:
        """The experiments of ``run_ids`` and of the versions' runs, and the versions' runs;
        None when MLflow cannot be asked (down now or a moment ago)."""
        uri = reader.target.tracking_uri
        now = self._clock()
        if self._down_until.get(uri, 0.0) > now:
            return None
        wanted_versions = sorted(set(versions))[: self.MAX_LOOKUPS]
        try:
            ask = [v for v in wanted_versions if not self._fresh(self._versions, (uri, *v), now)]
            if ask:
                found = await reader.version_runs(ask)
                self._keep(self._versions, {(uri, *k): v for k, v in found.items()})
            version_runs = {
                v: entry[0]
                for v in wanted_versions
                if (entry := self._versions.get((uri, *v))) is not None and entry[0] is not None
            }
            runs = sorted(set(run_ids) | {r for r in version_runs.values() if r})[: self.MAX_LOOKUPS]
            ask_runs = [r for r in runs if not self._fresh(self._runs, (uri, r), now)]
            if ask_runs:
                found_runs = await reader.run_experiments(ask_runs)
                self._keep(self._runs, {(uri, k): v for k, v in found_runs.items()})
        except MLflowUnavailable:
            self._down_until[uri] = self._clock() + self.DOWN_SECONDS
            return None
        self._down_until.pop(uri, None)
        experiments = {
            r: entry[0]
            for r in runs
            if (entry := self._runs.get((uri, r))) is not None and entry[0] is not None
        }
        return Lookups(experiments=experiments, versions={k: v or "" for k, v in version_runs.items()})


@dataclass(frozen=True)
class DashboardLinks:
    """The dashboard's :class:`~airflow_provider_hlml.review.card.LinkMaker`.

    :param airflow_base_path: the Airflow UI's base path (Airflow links are paths of this site).
    :param mlflow: the MLflow connection's target; None: no MLflow links.
    :param lookups: what MLflow said about the request's runs and versions; a run without a known
        experiment, or a version MLflow does not know, gets no link.
    """

    airflow_base_path: str
    mlflow: MLflowTarget | None = None
    lookups: Lookups = field(default_factory=Lookups)

    def mlflow_run(self, run_id: str) -> str | None:
        experiment = self.lookups.experiments.get(run_id)
        if self.mlflow is None or not experiment:
            return None
        return self.mlflow.run_url(experiment, run_id)

    def mlflow_model_version(self, name: str, version: str) -> str | None:
        if self.mlflow is None or (name, version) not in self.lookups.versions:
            return None
        return self.mlflow.model_url(name, version)

    def mlflow_compare_runs(self, run_ids: Sequence[str]) -> str | None:
        if self.mlflow is None or len(run_ids) < 2:
            return None
        experiments = [self.lookups.experiments.get(r) for r in run_ids]
        if not all(experiments):
            return None
        runs = quote(json.dumps(list(run_ids)), safe="")
        unique = quote(json.dumps(list(dict.fromkeys(experiments))), safe="")
        return f"{self.mlflow.ui_url}/#/compare-runs?runs={runs}&experiments={unique}"

    def airflow_task(self, location: GateLocation) -> str | None:
        from airflow_provider_hlml.plugins.views import task_instance_path

        return task_instance_path(
            self.airflow_base_path, location.dag_id, location.run_id, location.task_id, location.map_index
        )

    def airflow_dag_run(self, location: GateLocation) -> str | None:
        from airflow_provider_hlml.plugins.airflow_data import ui_path

        if not (location.dag_id and location.run_id):
            return None
        return ui_path(self.airflow_base_path, location.dag_id, location.run_id)

    def champion_run(self, call: Mapping[str, Any]) -> str | None:
        """The MLflow run of the champion version the request names, if MLflow knows it."""
        name, _version, champion = _model_versions(_context(call))
        if not (name and champion):
            return None
        return self.lookups.versions.get((name, champion)) or None


def card_for(call: Mapping[str, Any], links: DashboardLinks | None) -> Card:
    """The reviewer's card of ``call`` with the dashboard's links (None: a card without links)."""
    if links is None:
        return build_card(call)
    return build_card(call, links, champion_run_id=links.champion_run(call))
