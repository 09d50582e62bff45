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
