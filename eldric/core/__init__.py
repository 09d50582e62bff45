"""Model artifacts and the rules under every layer: names, digests, manifests, the blob store, file formats, chat templates;
the base error, the request errors and the settings loader."""
