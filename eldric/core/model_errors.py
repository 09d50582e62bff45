"""Errors of the model registry service, each carrying the HTTP status a view answers with.

They subclass the package's one base error (eldric.core.errors.EldricError), so
library callers can catch everything the registry raises in one place.
"""

from __future__ import annotations

from eldric.core.errors import EldricError


class ModelRegistryError(EldricError):
    """Base of the service's errors; `field` names the request field at fault, if any."""

    status = 500

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BadRequestError(ModelRegistryError):
    status = 400


class InvalidPathError(BadRequestError):
    """A file path with `..`, an absolute path, NUL, a backslash or another unsafe piece."""


class NotFoundError(ModelRegistryError):
    status = 404


class ConflictError(ModelRegistryError):
    status = 409


class TooLargeError(ModelRegistryError):
    status = 413


class RangeNotSatisfiableError(ModelRegistryError):
    """A Range the file cannot serve, or an upload chunk that does not start at the upload's offset."""

    status = 416

    def __init__(self, message: str, size: int | None = None, field: str | None = None) -> None:
        super().__init__(message, field)
        self.size = size


class InvalidFormatError(ModelRegistryError):
    """A file that is not what its name or the declared format says (bad GGUF magic, broken header)."""

    status = 422


class ImportFailedError(ModelRegistryError):
    """A URL import that cannot go on (HTTP 4xx from the source, too many retries)."""

    status = 502


class UnavailableError(ModelRegistryError):
    status = 503


class InsufficientStorageError(ModelRegistryError):
    status = 507
