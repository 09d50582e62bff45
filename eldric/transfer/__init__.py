"""Moving bytes over HTTP: sessions and the upstream allow-lists, retry with jitter, the ranged resumable download engine
and its peer swarm, rate limits, registry clients (OCI distribution, tokens), resumable uploads and URL fetches."""
