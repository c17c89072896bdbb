"""Evidence-based decisions: the promotion decision policy (:mod:`.decision`).

No Airflow here: the validation stage evaluates a policy, the gate and the approvals service read
its outcome. ``numpy`` and ``scipy`` are imported inside the functions that compute.
"""
