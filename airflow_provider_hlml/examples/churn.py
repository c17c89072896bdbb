"""The customer-churn example: a deterministic synthetic dataset and the stage callables.

Everything the churn DAGs run lives here, so the Python DAG and the YAML spec share it by import
path. No data is downloaded: :func:`generate_churn_data` draws the same rows for the same
``seed`` on every machine. pandas, numpy and scikit-learn are imported inside the functions, so
importing this module at DAG-parse time costs nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

TARGET = "churned"
FEATURES: tuple[str, ...] = (
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "support_tickets",
    "contract_type",
    "payment_delay_days",
    "num_products",
    "has_partner",
)
DEFAULT_SAMPLES = 2000
DEFAULT_SEED = 42
TEST_FRACTION = 0.25
#: Hyper-parameters of the churn model: inverse regularisation strength and solver iterations.
DEFAULT_PARAMS: dict[str, Any] = {"C": 1.0, "max_iter": 500}


def generate_churn_data(n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Synthetic customers with a ``churned`` label; identical for identical arguments.

    Churn is driven by short tenure, high charges, support tickets, payment delays and
    month-to-month contracts, plus noise, so a linear model reaches roughly 0.9 accuracy.

    :param n_samples: number of customers (rows).
    :param seed: random seed.
    """
    import numpy as np
    import pandas as pd

    if n_samples < 20:
        raise ValueError(f"n_samples must be at least 20, got {n_samples}")
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 73, n_samples)
    contract = rng.choice([0, 1, 2], n_samples, p=[0.55, 0.25, 0.20])
    monthly = np.round(rng.normal(70, 25, n_samples).clip(18, 150), 2)
    tickets = rng.poisson(1.2, n_samples)
    delay = rng.exponential(4.0, n_samples).round(1)
    products = rng.integers(1, 6, n_samples)
    partner = rng.integers(0, 2, n_samples)
    total = np.round(monthly * tenure * rng.uniform(0.9, 1.1, n_samples), 2)
    logit = (
        1.2
        - 0.07 * tenure
        + 0.025 * (monthly - 70)
        + 0.55 * tickets
        + 0.12 * delay
        - 1.1 * contract
        - 0.25 * products
        - 0.4 * partner
    )
    churned = (rng.uniform(size=n_samples) < 1 / (1 + np.exp(-3 * logit))).astype(int)
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "support_tickets": tickets,
            "contract_type": contract,
            "payment_delay_days": delay,
            "num_products": products,
            "has_partner": partner,
            TARGET: churned,
        }
    )


def split_churn_data(frame: pd.DataFrame, seed: int = DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train/test split (stratified by nothing, shuffled by ``seed``)."""
    import numpy as np

    order = np.random.default_rng(seed + 1).permutation(len(frame))
    n_test = max(1, int(len(frame) * TEST_FRACTION))
    test = frame.iloc[order[:n_test]].reset_index(drop=True)
    train = frame.iloc[order[n_test:]].reset_index(drop=True)
    return train, test


def _data_dir(output_dir: str | None) -> Path:
    base = (
        output_dir
        or os.environ.get("HLML_EXAMPLE_DATA_DIR")
        or str(Path(tempfile.gettempdir()) / "hlml-data")
    )
    return Path(base)


def prepare_churn_data(
    output_dir: str | None = None, n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED
) -> dict[str, Any]:
    """Data-preparation stage: write the train and test splits as CSV files and describe them.

    :param output_dir: folder of the files (default ``$HLML_EXAMPLE_DATA_DIR`` or a temp folder).
    :param n_samples: rows to generate.
    :param seed: random seed.
    :return: ``{"train_path", "test_path", "rows", "train_rows", "test_rows", "churn_rate", "seed"}``.
    """
    frame = generate_churn_data(n_samples, seed)
    train, test = split_churn_data(frame, seed)
    folder = _data_dir(output_dir) / f"churn-{n_samples}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    train_path, test_path = folder / "train.csv", folder / "test.csv"
    # Write to a temp name then rename, so a concurrent reader never sees half a file.
    for part, path in ((train, train_path), (test, test_path)):
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        part.to_csv(tmp, index=False)
        tmp.replace(path)
    return {
        "train_path": str(train_path),
        "test_path": str(test_path),
        "rows": len(frame),
        "train_rows": len(train),
        "test_rows": len(test),
        "churn_rate": round(float(frame[TARGET].mean()), 4),
        "seed": seed,
    }


def _training_frames(
    data: Mapping[str, Any] | None, n_samples: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The splits written by :func:`prepare_churn_data` when given its output, else fresh ones."""
    import pandas as pd

    if data and data.get("train_path") and Path(str(data["train_path"])).exists():
        return pd.read_csv(data["train_path"]), pd.read_csv(data["test_path"])
    return split_churn_data(generate_churn_data(n_samples, seed), seed)


def train_churn_model(
    params: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    data_task_id: str | None = "prepare_data",
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED,
) -> Any:
    """Training stage: a scaled logistic-regression churn classifier (a scikit-learn pipeline).

    Reads the splits written by the data-preparation task ``data_task_id`` when it ran in the
    same DAG run, otherwise generates them.

    :param params: hyper-parameters (``C``, ``max_iter``).
    :param context: the Airflow task context (passed by ``MLflowTrainOperator``).
    :param data_task_id: task id of the data-preparation stage, or ``None``.
    :param n_samples: rows to generate when there is no prepared data.
    :param seed: random seed of the data.
    :return: a ``TrainResult`` with test-set metrics, the fitted model and an input example.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from airflow_provider_hlml.operators.mlflow import TrainResult

    prepared = None
    if context is not None and data_task_id:
        prepared = context["ti"].xcom_pull(task_ids=data_task_id)
    train, test = _training_frames(prepared, n_samples, seed)
    hyper = {**DEFAULT_PARAMS, **dict(params or {})}
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=float(hyper["C"]), max_iter=int(hyper["max_iter"]))
    )
    x_train, y_train = train[list(FEATURES)].astype("float64"), train[TARGET]
    x_test, y_test = test[list(FEATURES)].astype("float64"), test[TARGET]
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    scores = model.predict_proba(x_test)[:, 1]
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "precision": float(precision_score(y_test, predicted, zero_division=0)),
        "recall": float(recall_score(y_test, predicted, zero_division=0)),
        "f1": float(f1_score(y_test, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_test, scores)),
        "train_rows": float(len(train)),
    }
    return TrainResult(metrics=metrics, model=model, input_example=x_test.head(5))


def churn_validation_data(
    n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED, **_airflow: Any
) -> pd.DataFrame:
    """Validation data: the held-out split (features and the ``churned`` label).

    Extra keyword arguments (such as the task ``context`` a caller may pass) are ignored.
    """
    _, test = split_churn_data(generate_churn_data(n_samples, seed), seed)
    features = test[list(FEATURES)].astype("float64")
    features[TARGET] = test[TARGET]
    return features


def monitor_churn_model(
    model_uri: str, batch_size: int = 400, seed: int = DEFAULT_SEED + 1000
) -> dict[str, float]:
    """Monitoring stage: score a fresh batch of customers with the deployed model.

    :param model_uri: the deployed model, e.g. ``models:/churn_predictor@champion``.
    :param batch_size: rows in the batch.
    :param seed: seed of the batch (different from the training data's).
    :return: ``accuracy``, ``latency_ms`` (per batch) and ``predicted_churn_rate`` on the batch.
    """
    import mlflow.pyfunc

    from airflow_provider_hlml.operators.mlflow import quiet_skops_module_scan

    batch = generate_churn_data(batch_size, seed)
    with quiet_skops_module_scan():
        model = mlflow.pyfunc.load_model(model_uri)
    started = time.perf_counter()
    predicted = model.predict(batch[list(FEATURES)].astype("float64"))
    latency_ms = (time.perf_counter() - started) * 1000
    labels = [int(value) for value in list(predicted)]
    correct = sum(int(p == t) for p, t in zip(labels, batch[TARGET].tolist(), strict=True))
    return {
        "accuracy": correct / len(labels),
        "latency_ms": latency_ms,
        "predicted_churn_rate": sum(labels) / len(labels),
    }


def churn_reference_data(
    n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED, **_airflow: Any
) -> pd.DataFrame:
    """Drift reference: the training split the churn model learned from (features and label).

    Extra keyword arguments (such as the task ``context``) are ignored.
    """
    train, _ = split_churn_data(generate_churn_data(n_samples, seed), seed)
    features = train[list(FEATURES)].astype("float64")
    features[TARGET] = train[TARGET]
    return features


def churn_recent_data(
    context: Mapping[str, Any] | None = None, batch_size: int = 500, seed: int = DEFAULT_SEED + 2000
) -> pd.DataFrame:
    """Recent production rows: a fresh batch of customers, with their (late-arriving) labels.

    The DAG run's ``charges_shift`` param (default 0) is added to the monthly charges: trigger
    the drift DAG with ``{"charges_shift": 40}`` to see a drift request.

    :param context: the Airflow task context (its ``params``).
    :param batch_size: rows in the batch.
    :param seed: seed of the batch (different from the training data's).
    """
    params = (context or {}).get("params") or {}
    shift = params.get("charges_shift", 0.0)
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not -1000 <= shift <= 1000:
        raise ValueError(f"charges_shift must be a number from -1000 to 1000, got {str(shift)[:40]!r}")
    batch = generate_churn_data(batch_size, seed)
    features = batch[list(FEATURES)].astype("float64")
    features["monthly_charges"] += float(shift)
    features[TARGET] = batch[TARGET]
    return features
