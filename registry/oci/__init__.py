"""The data node's OCI distribution API (`/v2/`): Ollama models, pushed images, the pull-through cache.

One store (`store.py`) keeps manifests, tags and blob records in the registry's SQLite
database and the bytes in the registry's one content-addressed blob store, so a blob
is kept once whether a registry model, a push or the mirror brought it. `api.py` is
the Flask blueprint; `pullthrough.py` fetches from the upstream registry once;
`registry_models.py` shows committed GGUF models as Ollama manifests; `mirror.py`
lists, evicts and checks the cache for upstream updates.
"""
