"""The controller's one base error; views map each kind to its HTTP status."""


class ControllerError(Exception):
    status = 500


class BadRequestError(ControllerError):
    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(ControllerError):
    status = 404


class ConflictError(ControllerError):
    status = 409


class UnavailableError(ControllerError):
    status = 503
