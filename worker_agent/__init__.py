"""The worker agent: one per node; consumes its queues, downloads and installs models, reports to Redis."""
