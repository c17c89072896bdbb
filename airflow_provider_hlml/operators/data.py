"""The tabular inputs the stage operators share: a DataFrame from a callable or a local file, and
a model's predictions as one value per row. pandas and numpy are imported when a helper runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_hlml.operators.mlflow_runs import call_with_supported_kwargs

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

__all__ = ["as_1d_array", "load_frame"]

#: What a data file may be (a path is only ever read from the local file system).
FRAME_SUFFIXES = (".csv", ".parquet", ".pq")


def load_frame(
    source: Callable[..., Any] | str | os.PathLike[str] | pd.DataFrame | None,
    context: Context,
    *,
    what: str,
    task_id: str,
) -> pd.DataFrame:
    """The DataFrame ``source`` gives: a callable's return value (called with ``context`` when it
    takes it), a DataFrame as is, or a local ``.csv`` / ``.parquet`` file read with pandas.

    A path names a file on the worker's file system only: pandas is handed a ``Path``, never a
    string it could read as a URL. For remote data, pass a callable.

    :param source: the callable, DataFrame or path.
    :param context: the task context (offered to the callable).
    :param what: the argument's name, for messages (``data``, ``reference``, ...).
    :param task_id: the task's id, for messages.
    """
    import pandas as pd

    if callable(source):
        frame = call_with_supported_kwargs(source, {"context": context})
    elif isinstance(source, pd.DataFrame):
        frame = source
    elif source is None or (isinstance(source, str) and not source.strip()):
        raise ValueError(f"task {task_id!r}: {what} is required (a callable or a CSV/Parquet path)")
    else:
        path = Path(os.fspath(source))
        if not path.is_file():
            raise FileNotFoundError(f"{what} file {str(path)[:300]!r} of task {task_id!r} does not exist")
        suffix = path.suffix.lower()
        if suffix not in FRAME_SUFFIXES:
            raise ValueError(f"{what} file {str(path)[:300]!r}: use a .csv or .parquet file")
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(
            f"{what} of task {task_id!r} must give a pandas DataFrame, got {type(frame).__name__}"
        )
    return frame


def as_1d_array(predictions: Any) -> Any:
    """A pyfunc model's predictions as a 1-D array (a one-column frame or series included)."""
    import numpy as np

    if predictions is None:
        return None
    values = np.asarray(getattr(predictions, "values", predictions))
    return values.reshape(-1) if values.ndim == 2 and values.shape[1] == 1 else values
