"""Why a transfer failed; only SourceUnavailableError is worth a retry."""

from eldric.core.errors import EldricError


class TransferError(EldricError):
    """Base of the transfer toolkit's errors."""


class SourceUnavailableError(TransferError):
    """The source could not be reached or answered 5xx: transient, retried with backoff."""


class ModelNotFoundError(TransferError):
    """The source has no such model or tag."""


class SourceError(TransferError):
    """The source answered, but with something unusable (4xx, bad manifest)."""


class InsufficientSpaceError(TransferError):
    """The node lacks the disk space the model needs: refused before the first byte is fetched."""


class HostNotAllowedError(SourceError):
    """An upstream host or address outside the allow-lists: refused before any connection to it."""


class DownloadStoppedError(TransferError):
    """The process is shutting down (SIGTERM): the download stopped and kept its partial data for the next start."""
