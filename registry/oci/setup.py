"""Building the /v2/ door into the registry app: store, pushes, registry models, mirror, auth."""

from __future__ import annotations

from collections.abc import Iterable

from flask import Flask, request

from eldric.transfer.upstreams import AddressPolicy
from registry.oci import api
from registry.oci.auth import is_authorized, unauthorized
from registry.oci.resolver import Resolver
from registry.oci.mirror import Mirror
from registry.oci.pullthrough import PullThrough
from registry.oci.pushes import Pushes
from registry.oci.registry_models import RegistryModels
from registry.oci.store import OCIStore
from registry.oci.upstream import DEFAULT_TIMEOUT, Upstream
from registry.service import RegistryService

NO_UPSTREAM = ("", "none", "off")  # values of --upstream that turn the pull-through cache off


def install_oci(app: Flask, svc: RegistryService, *, upstream_url: str, tag_ttl: float, max_mirror_bytes: int,
                policy: AddressPolicy, secrets: Iterable[str], upstream_timeout: float = DEFAULT_TIMEOUT) -> Resolver:
    """Mount /v2/ on `app` over the registry's storage; call after the app's own error handlers."""
    store = OCIStore(svc.catalog, svc.blobs, clock=svc.clock)
    upstream = (None if upstream_url.strip().lower() in NO_UPSTREAM
                else Upstream(upstream_url, policy, timeout=upstream_timeout))
    mirror = Mirror(store, upstream, max_bytes=max_mirror_bytes, upstream_url=upstream.shown if upstream else "",
                    tag_ttl=tag_ttl)
    pull = PullThrough(store, upstream, tag_ttl=tag_ttl, max_blob_bytes=svc.max_file_bytes, on_stored=mirror.evict,
                       space=svc.space.check, head_wait=upstream_timeout) if upstream else None
    door = Resolver(store, RegistryModels(svc.catalog, store), pull)
    app.extensions["eldric.oci"] = door
    app.extensions["eldric.oci.pushes"] = Pushes(svc.root / "oci-uploads", store, svc.max_file_bytes, svc.space)
    app.extensions["eldric.mirror"] = mirror
    api.register(app)
    wanted = tuple(s for s in secrets if s)

    @app.before_request
    def require_oci_credentials():
        if wanted and api.is_oci_path(request.path) and not is_authorized(request.headers.get("Authorization"), wanted):
            return api.oci_error_response(unauthorized())
        return None

    return door
