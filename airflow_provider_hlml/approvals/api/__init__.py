"""HTTP layer of the approvals service: dependencies, error handling, routers."""
