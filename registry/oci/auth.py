"""Who may use /v2/: with the cluster secret or the API token set, a request must carry one of them.

Accepted as `Authorization: Bearer <secret>` (the project's one scheme, eldric/web/auth.py) or
as HTTP Basic with the secret as the password and any user name, which is how OCI clients send
credentials: `skopeo --creds eldric:<secret>`, `docker login`, or an agent whose
ELDRIC_OLLAMA_REGISTRY is `http://eldric:<secret>@data-node:8892` (requests sends URL credentials
as Basic). A refusal is 401 UNAUTHORIZED in the OCI format with a `WWW-Authenticate: Basic` challenge.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable

from eldric.web.auth import has_token
from registry.oci.errors import OCIError

REALM = "eldric registry"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'


def basic_password(header: str | None) -> str | None:
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def is_authorized(header: str | None, secrets: Iterable[str]) -> bool:
    """Whether the Authorization header carries one of `secrets` (always true when none is set)."""
    wanted = [s for s in secrets if s]
    if not wanted:
        return True
    password = basic_password(header)
    for secret in wanted:
        if has_token(header, secret):
            return True
        if password is not None and hmac.compare_digest(password.encode(), secret.encode()):
            return True
    return False


def unauthorized() -> OCIError:
    return OCIError("UNAUTHORIZED", "authentication required: send the cluster secret or the API token "
                    "(Authorization: Bearer <token>, or Basic with it as the password)")
