"""The approval gate's protocol, free of Airflow: wire models, the gate's state in a request, the
approval policy, trigger events and the gate's result.

The sensor, the trigger, the API server's wake path, the dashboard and the approvals service all
import these from here; nothing in this package imports ``airflow``.
"""
