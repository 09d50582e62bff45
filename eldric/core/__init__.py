"""Model artifacts: names, digests, manifests, the blob store, file formats; the base error."""
