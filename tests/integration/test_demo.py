"""``make demo APPROVE=1`` end to end: the non-interactive demo exits 0 with a promoted model.

Runs ``scripts/demo.py start --approve`` exactly as the Makefile does, in a temporary state
folder and on free ports, then ``stop``, and checks what it left behind: the champion alias in
the demo's own MLflow server (read from its SQLite store) and that every process it started is
gone. Exclude it with ``-m "not demo"``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

# Starting six servers and running the pipeline takes minutes on a busy 2-core machine.
pytestmark = [pytest.mark.e2e, pytest.mark.demo, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.py"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def test_non_interactive_demo_promotes_a_model(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING", "HUMANLAYER"))
    }
    command = [sys.executable, str(DEMO), "--state-dir", str(state)]
    try:
        result = subprocess.run(
            [*command, "start", "--approve", "--free-ports", "--timeout", "1200"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=2100,
            check=False,
        )
        pids = json.loads((state / "pids.json").read_text()) if (state / "pids.json").exists() else {}
    finally:
        stopped = subprocess.run(
            [*command, "stop"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
        )
    output = result.stdout
    assert result.returncode == 0, (
        f"{output[:5000]}\n...\n{output[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )

    # What the user sees: where to look, how to approve, and the promoted version.
    assert re.search(r"Airflow UI\s+http://127\.0\.0\.1:\d+/dags/churn_pipeline", output)
    assert re.search(r"MLflow UI\s+http://127\.0\.0\.1:\d+/#/models/churn_predictor", output)
    assert "hlml-approvals approve <call_id>" in output
    match = re.search(r"churn_predictor version (\d+) is now @champion", output)
    assert match, output[-3000:]

    # The demo's MLflow store agrees: that version holds the champion alias.
    with closing(sqlite3.connect(state / "mlflow" / "mlflow.db")) as conn:
        rows = conn.execute(
            "SELECT version FROM registered_model_aliases WHERE name = 'churn_predictor' AND alias = 'champion'"
        ).fetchall()
    assert rows == [(int(match.group(1)),)]
    # ... and verify-model, as the README shows it, finds that version's signed approval.
    assert f"verified: churn_predictor v{match.group(1)} (@champion) was approved by reviewer" in output

    # The gate parked (awaiting_input): the approvals service's signed webhook reached the API
    # server, which ended the approved gate there (no resume on a worker).
    api_log = (state / "logs" / "api-server.log").read_text(errors="replace")
    assert re.search(r"Webhook for approval request \S+ \(signed\): ended", api_log), api_log[-3000:]

    # Every process it started (api-server, scheduler, dag-processor, triggerer, MLflow,
    # approvals) was recorded and is gone after `stop`.
    assert set(pids) == {"mlflow", "approvals", "api-server", "scheduler", "dag-processor", "triggerer"}
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not (state / "pids.json").exists()
