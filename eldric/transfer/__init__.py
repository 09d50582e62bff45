"""Moving bytes over HTTP: session, retry rules, ranged downloads, range parsing."""
