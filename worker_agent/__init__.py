"""The worker agent, one per node: consumes its queues and the shared maintenance queue, pulls, verifies, receives distributed models and installs
models into its backends (installers/), serves blobs to peers, reports to Redis."""
