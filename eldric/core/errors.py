"""The foundation's one base error and the artifact errors every service shares."""


class EldricError(Exception):
    """Base of every error Eldric raises on purpose; each service's errors derive from it."""


class InvalidNameError(EldricError, ValueError):
    """A model name that does not follow the grammar (or tries path tricks)."""


class InvalidDigestError(EldricError, ValueError):
    """A digest that is not `sha256:<64 lowercase hex>`."""


class InvalidManifestError(EldricError, ValueError):
    """A manifest that is not a usable schema-2 image manifest."""


class DigestMismatchError(EldricError):
    """Bytes whose sha256 differs from the digest they were promised to have."""


MAX_ERROR_CHARS = 2048  # a worker's error in a job record: a few lines, never an upstream's whole answer


def cap_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` in at most `limit` characters; a longer one is cut and ends with a marker saying so."""
    if len(text) <= limit:
        return text
    marker = f"… [cut: {len(text):,} characters in all]"
    return text[: max(0, limit - len(marker))] + marker
