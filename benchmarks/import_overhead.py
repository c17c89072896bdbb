"""Added import time of the provider's DAG-facing modules over ``import airflow.sdk``.

Each sample is a fresh interpreter that first imports ``airflow.sdk`` (timed) and then every
public provider module (timed separately), so the provider's share is measured in the same
process, free of the start-up noise that differs between two interpreters. The figure is the
median over repeated runs. Target: under 30 ms added.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

MODULES = [
    "airflow_provider_hlml",
    "airflow_provider_hlml.hooks.humanlayer",
    "airflow_provider_hlml.hooks.mlflow",
    "airflow_provider_hlml.operators.mlflow",
    "airflow_provider_hlml.sensors.approval",
    "airflow_provider_hlml.links.mlflow",
    "airflow_provider_hlml.links.approval",
    "airflow_provider_hlml.decorators.mlflow_train",
]
# Loaded by the triggerer when a gate waits, not while DAG files are parsed.
TRIGGER_MODULES = ["airflow_provider_hlml.triggers.approval"]
TIMER = """
import importlib, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
dag_facing, trigger = json.loads(sys.argv[1])
for name in dag_facing:
    importlib.import_module(name)
t2 = time.perf_counter()
for name in trigger:
    importlib.import_module(name)
t3 = time.perf_counter()
heavy = sorted(m for m in ("mlflow", "sklearn", "fastapi", "humanlayer") if m in sys.modules)
print(json.dumps({"sdk": t1 - t0, "provider": t2 - t1, "trigger": t3 - t2, "heavy": heavy}))
"""


def sample() -> dict:
    argv = [sys.executable, "-c", TIMER, json.dumps([MODULES, TRIGGER_MODULES])]
    # Installed packages run from cached bytecode (pip and `make install` compile it); so does the
    # provider here, also where PYTHONDONTWRITEBYTECODE is set: otherwise each sample would time
    # compiling its source instead of importing it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"import failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    sample()  # warm the file-system cache and bytecode
    runs = [sample() for _ in range(args.runs)]
    sdk_ms = [r["sdk"] * 1000 for r in runs]
    added_ms = [r["provider"] * 1000 for r in runs]
    result = {
        "runs": args.runs,
        "airflow_sdk_ms_median": round(statistics.median(sdk_ms), 1),
        "added_ms_median": round(statistics.median(added_ms), 1),
        "added_ms_min": round(min(added_ms), 1),
        "added_ms_max": round(max(added_ms), 1),
        "added_share_of_sdk": round(statistics.median(added_ms) / statistics.median(sdk_ms), 3),
        "trigger_module_ms_median": round(statistics.median(r["trigger"] * 1000 for r in runs), 1),
        "heavy_modules_loaded": runs[-1]["heavy"],
        "target_ms": 30,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
