"""The controller's errors: the foundation's status-carrying errors (one set for every service).

Views map each kind to its HTTP status through the one error format (eldric.web.problems).
"""

from eldric.core.request_errors import BadRequestError, ConflictError, NotFoundError, UnavailableError  # noqa: F401
from eldric.core.request_errors import RequestError as ControllerError  # noqa: F401
