"""The operator's side: the `eldric` commands, SDKs of the controller and registry APIs, bundles; clients of the
services' HTTP APIs only, importing no service."""
