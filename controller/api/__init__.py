"""The controller's REST API under /api/v1: one flask-smorest Blueprint per resource, over the controller modules that do the work."""
