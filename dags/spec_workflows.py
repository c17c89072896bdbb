"""DAGs built from the YAML workflow specs in ``dags/workflows/`` (one DAG per file).

An invalid spec fails this file's import with a message naming the spec file, the stage and the
field, and no DAG from the folder is loaded until it is fixed.
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_hlml.workflows.builder import load_workflows

globals().update(load_workflows(Path(__file__).parent / "workflows"))
