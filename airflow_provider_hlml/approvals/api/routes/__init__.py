"""Routers of the approvals service, one module per resource."""
