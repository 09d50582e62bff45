"""OCI distribution errors: `{"errors": [{"code", "message", "detail"}]}` with the status the spec gives.

https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes
"""

from __future__ import annotations

from eldric.core.errors import EldricError

STATUS = {
    "BLOB_UNKNOWN": 404, "BLOB_UPLOAD_INVALID": 400, "BLOB_UPLOAD_UNKNOWN": 404, "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400, "MANIFEST_INVALID": 400, "MANIFEST_UNKNOWN": 404, "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404, "SIZE_INVALID": 400, "UNAUTHORIZED": 401, "DENIED": 403, "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429, "RANGE_INVALID": 416, "UPSTREAM_UNAVAILABLE": 502, "TOO_LARGE": 413,
    "STORAGE_FULL": 507,
}


class OCIError(EldricError):
    """An answer of the /v2/ API in the OCI error format; `code` is one of STATUS."""

    def __init__(self, code: str, message: str, detail: object = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.detail = code, message, detail
        self.status = status or STATUS[code]

    def body(self) -> dict:
        error: dict = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}
