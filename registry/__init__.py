"""The library of model artifacts (names, digests, blobs, manifests, formats) and the data worker's registry."""
