"""Clients of the REST APIs (the operator CLI and SDKs); they import no service."""
