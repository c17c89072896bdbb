"""Added import time of the provider's DAG-facing modules over ``import airflow.sdk``.

Each sample is a fresh interpreter; the figure is the median over repeated runs of
(time to import airflow.sdk + every public provider module) minus (time to import airflow.sdk),
measured in alternation so machine noise hits both sides alike. Target: under 30 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

BASE = "import airflow.sdk"
MODULES = [
    "airflow_provider_hlml",
    "airflow_provider_hlml.hooks.humanlayer",
    "airflow_provider_hlml.hooks.mlflow",
    "airflow_provider_hlml.operators.mlflow",
    "airflow_provider_hlml.sensors.approval",
    "airflow_provider_hlml.triggers.approval",
    "airflow_provider_hlml.links.mlflow",
    "airflow_provider_hlml.links.approval",
]
TIMER = """
import time, sys
t0 = time.perf_counter()
exec(sys.argv[1])
print(time.perf_counter() - t0)
"""


def sample(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", TIMER, code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    provider = BASE + "\n" + "\n".join(f"import {m}" for m in MODULES)
    sample(provider)  # warm the file-system cache and bytecode
    base_times, provider_times = [], []
    for _ in range(args.runs):
        base_times.append(sample(BASE))
        provider_times.append(sample(provider))
    base_ms = statistics.median(base_times) * 1000
    prov_ms = statistics.median(provider_times) * 1000
    added = [(p - b) * 1000 for b, p in zip(base_times, provider_times, strict=True)]
    result = {
        "runs": args.runs,
        "airflow_sdk_ms_median": round(base_ms, 1),
        "with_provider_ms_median": round(prov_ms, 1),
        "added_ms_median": round(statistics.median(added), 1),
        "target_ms": 30,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
