"""The agent's one base error and its kinds; only SourceUnavailableError is retried."""

from registry.errors import DigestMismatchError  # noqa: F401  (re-exported: the agent raises it too)


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class SourceUnavailableError(AgentError):
    """The source could not be reached or answered 5xx: transient, retried with backoff."""


class ModelNotFoundError(AgentError):
    """The source has no such model or tag."""


class SourceError(AgentError):
    """The source answered, but with something unusable (4xx, bad manifest)."""


class NotEligibleError(AgentError):
    """This worker's type never takes model work."""


class JobExpiredError(AgentError):
    """The job's deadline passed before this worker could run it."""


class SettingsError(AgentError, ValueError):
    """A bad configuration value, reported at start-up."""


class InsufficientSpaceError(AgentError):
    """The node lacks the disk space the model needs: refused before the first byte is fetched."""
