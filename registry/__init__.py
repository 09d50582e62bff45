"""The data node's model registry service: the catalog and storage of the cluster's own models, uploads, URL imports,
its HTTP API, and the OCI `/v2/` door with its pull-through cache (oci/)."""
