"""What integration tests and benches both stand on: real processes (redis-server, eldric services),
a loopback OCI registry, small GGUF models, a shared uplink. Not part of the product package."""
