"""The error hierarchy. Every error has a stable `code` shared by the engine, API and CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RemitError(Exception):
    """Base of every error Remit raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (code, field, details), whatever the subclass's constructor takes: the
        # engine host sends errors back to the worker process that asked (`remit.relay`).
        return (_restore_error, (type(self), self.args, self.__dict__))


def _restore_error(kind: type[RemitError], args: tuple[Any, ...], state: dict[str, Any]) -> RemitError:
    error = kind.__new__(kind)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidRequest(RemitError):
    """The request could not be decided: bad amount, unknown meter or agent, a limit exceeded."""

    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, details={"field": field} if field else None)
        if code is not None:
            self.code = code
        self.field = field


class ConfigError(RemitError):
    """A configuration document is invalid. `errors` lists each problem with its path."""

    code = "invalid_config"

    def __init__(self, message: str, errors: list[dict[str, str]]) -> None:
        super().__init__(message, details={"errors": errors})
        self.errors = errors


class NotFound(RemitError):
    code = "not_found"


class Unauthorized(RemitError):
    """No key, or a key that is unknown, malformed or revoked."""

    code = "unauthorized"


class Forbidden(RemitError):
    """The key is valid but may not do this (an agent key acting as another agent or as an admin)."""

    code = "forbidden"


class Conflict(RemitError):
    """The request conflicts with what already happened (a hold resolved, a key reused)."""

    code = "conflict"

    def __init__(self, message: str, *, code: str, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.code = code


class Denied(RemitError):
    """An action was not allowed: `action()` raises this for every decision but `allow`.

    `decision` is the whole answer of `authorize` (its budgets show the headroom left),
    `reasons` names each budget that refused, and `retry_after_seconds` says when a retry could
    succeed (None: not by waiting).
    """

    code = "denied"

    def __init__(self, decision: Mapping[str, Any], *, action: str | None = None) -> None:
        self.decision = dict(decision)
        self.outcome = str(decision.get("decision"))
        self.reasons: list[dict[str, Any]] = [dict(reason) for reason in decision.get("reasons") or []]
        retry = decision.get("retry_after_seconds")
        self.retry_after_seconds: int | None = retry if isinstance(retry, int) else None
        self.action = action
        why = "; ".join(str(reason.get("message") or reason.get("code")) for reason in self.reasons)
        message = f"{action or 'the action'}: {self.outcome}: {why or 'no reason given'}"
        if self.retry_after_seconds is not None:
            message += f" (retry after {self.retry_after_seconds}s)"
        super().__init__(message, details=self.decision)


class Overloaded(RemitError):
    """The engine's queue is full; retry shortly."""

    code = "overloaded"


class Unavailable(RemitError):
    """The store failed while deciding a batch; nothing of the batch was written. Retry."""

    code = "unavailable"


def batch_failure(error: BaseException) -> BaseException:
    """What one caller of a failed batch is told: its own exception, caused by the store's.

    Every caller gets a fresh object, so tracebacks raised in many threads never pile onto
    one shared exception. Remit's own errors (an invariant violation) pass through as they are.
    """
    if isinstance(error, RemitError) or not isinstance(error, Exception):
        return error
    failure = Unavailable(f"the batch could not be decided: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


class InvariantViolation(RemitError):
    """A check that guards money failed. The transaction that found it is rolled back."""

    code = "invariant_violation"
