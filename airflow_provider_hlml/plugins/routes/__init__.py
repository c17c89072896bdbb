"""Routers of the dashboard app: JSON endpoints (:mod:`.api`) and pages (:mod:`.pages`)."""
