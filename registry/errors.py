"""The registry package's one base error and its kinds."""


class RegistryError(Exception):
    """Base of every error raised by the registry package."""


class InvalidNameError(RegistryError, ValueError):
    """A model name that does not follow the grammar (or tries path tricks)."""


class InvalidDigestError(RegistryError, ValueError):
    """A digest that is not `sha256:<64 lowercase hex>`."""


class InvalidManifestError(RegistryError, ValueError):
    """A manifest that is not a usable schema-2 image manifest."""


class DigestMismatchError(RegistryError):
    """Bytes whose sha256 differs from the digest they were promised to have."""
