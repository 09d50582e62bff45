"""Errors a request is refused with, each carrying the HTTP status a view answers it with.

One set for every service (controller, registry, agent): code below the views raises them,
and each service's error handler turns one into the one error format (eldric.web.problems).
They subclass the package's one base error (eldric.core.errors.EldricError), so library
callers can catch everything Eldric raises in one place.
"""

from __future__ import annotations

from eldric.core.errors import EldricError


class RequestError(EldricError):
    """Base of the status-carrying errors; `field` names the request field at fault, if any."""

    status = 500

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BadRequestError(RequestError):
    status = 400


class InvalidPathError(BadRequestError):
    """A file path with `..`, an absolute path, NUL, a backslash or another unsafe piece."""


class NotFoundError(RequestError):
    status = 404


class ConflictError(RequestError):
    status = 409


class TooLargeError(RequestError):
    status = 413


class RangeNotSatisfiableError(RequestError):
    """A Range the file cannot serve, or an upload chunk that does not start at the upload's offset."""

    status = 416

    def __init__(self, message: str, size: int | None = None, field: str | None = None) -> None:
        super().__init__(message, field)
        self.size = size


class InvalidFormatError(RequestError):
    """A file that is not what its name or the declared format says (bad GGUF magic, broken header)."""

    status = 422


class ImportFailedError(RequestError):
    """A URL import that cannot go on (HTTP 4xx from the source, too many retries)."""

    status = 502


class UpstreamUnavailableError(RequestError):
    """A registry outside the cluster that the request needs could not be asked, or answered an error."""

    status = 502


class UnavailableError(RequestError):
    status = 503


class InsufficientStorageError(RequestError):
    status = 507
