"""Callables of the example DAGs in ``dags/`` (importable, so YAML specs can name them)."""
