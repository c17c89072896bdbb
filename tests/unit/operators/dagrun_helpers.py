"""Run a DAG defined in a test with ``dag.test()`` and read what it left behind.

A DAG built inside a test must be serialized to the metadata DB before ``dag.test()`` (see
shared airflow-notes): the dag bundle is synced, the DAG bagged and written, then run.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd


def run_dag(dag: Any, conf: dict[str, Any] | None = None) -> Any:
    """Serialize ``dag`` and run it in-process; returns the finished DagRun."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test(run_conf=conf)


def xcom_value(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    """The XCom ``key`` a task instance of ``dag_run`` pushed (``None`` if none)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key)
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def task_states(dag_run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance.task_id, TaskInstance.state).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {task_id: str(state) for task_id, state in rows}


def churn_frame(part: str = "train", seed: int = 0) -> pd.DataFrame:
    """A small binary-classification table with a ``churned`` label: 240 train / 120 validation rows."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=360,
        n_features=5,
        n_informative=3,
        n_redundant=0,
        n_clusters_per_class=1,
        class_sep=1.5,
        flip_y=0.0,
        random_state=seed,
    )
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["churned"] = y.astype(np.int64)
    if part not in ("train", "validation"):
        raise ValueError(f"part must be 'train' or 'validation', got {part!r}")
    return (
        frame.iloc[:240].reset_index(drop=True)
        if part == "train"
        else frame.iloc[240:].reset_index(drop=True)
    )
