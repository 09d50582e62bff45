"""The agent's one base error and its kinds; only SourceUnavailableError is retried."""

from eldric.core.errors import DigestMismatchError, EldricError  # noqa: F401  (re-exported: the agent raises it too)
from eldric.transfer.errors import (InsufficientSpaceError, ModelNotFoundError, SourceError,  # noqa: F401
                                    SourceUnavailableError)


class AgentError(EldricError):
    """Base of every error the agent raises on purpose."""


class NotEligibleError(AgentError):
    """This worker's type never takes model work."""


class JobExpiredError(AgentError):
    """The job's deadline passed before this worker could run it."""


class SettingsError(AgentError, ValueError):
    """A bad configuration value, reported at start-up."""
