"""Ray's failures, recognised once: the one module that imports Ray's exception classes and maps them.

Everything else asks this module what a Ray error means (never its class name as a string), so a Ray
rename breaks the mapping test here instead of turning 503s into 500s elsewhere.
"""

from __future__ import annotations

import enum

from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)

from council.errors import CouncilError, Overloaded, Unreachable

# The families an HTTP exception handler catches: every Ray error, and every Serve one.
RAY_ERRORS: tuple[type[Exception], ...] = (RayError, RayServeException)


class Failure(enum.Enum):
    """What a Ray failure means to the council."""

    OVERLOADED = "overloaded"  # a queue is full: retry later
    UNAVAILABLE = "unavailable"  # the deployment or replica is not there now (deploying, restarting)
    REPLICA_LOST = "replica_lost"  # the replica died mid-request; Serve does not re-run it elsewhere
    TIMEOUT = "timeout"  # no answer within the caller's timeout
    SERVE = "serve"  # any other Serve refusal (no such application, ...)


# Most specific first: the first class the error is an instance of decides.
KINDS: tuple[tuple[type[BaseException], Failure], ...] = (
    (BackPressureError, Failure.OVERLOADED),
    (DeploymentUnavailableError, Failure.UNAVAILABLE),
    (ReplicaUnavailableError, Failure.UNAVAILABLE),
    (RayActorError, Failure.REPLICA_LOST),  # ActorDiedError, ActorUnavailableError
    (GetTimeoutError, Failure.TIMEOUT),
    (RayServeException, Failure.SERVE),
)


def cause(error: BaseException) -> BaseException:
    """The exception a deployment really raised: Ray wraps it in a RayTaskError whose `.cause` is the original."""
    for _ in range(8):
        inner = getattr(error, "cause", None)
        if not isinstance(error, RayTaskError) or inner is None:
            break
        error = inner
    return error


def failure(error: BaseException) -> Failure | None:
    """The kind of Ray failure `error` (or what it wraps) is; None when it is not one."""
    inner = cause(error)
    return next((kind for cls, kind in KINDS if isinstance(inner, cls)), None)


def unwrap(error: BaseException) -> BaseException:
    """`cause(error)`, with Serve's BackPressureError (a member's queue is full) as Overloaded and its Retry-After."""
    inner = cause(error)
    if failure(inner) is Failure.OVERLOADED:
        retry = getattr(inner, "retry_after_s", None) or 1.0
        return Overloaded(f"the council is at capacity: {_message(inner)}", retry_after_s=retry)
    return inner


def as_council_error(error: BaseException) -> CouncilError | None:
    """The council error `error` stands for inside the council: an unavailable service is Overloaded; None
    when it stands for none (a bug: the caller sees a 500)."""
    inner = unwrap(error)
    if isinstance(inner, CouncilError):
        return inner
    if failure(inner) is Failure.UNAVAILABLE:
        return Overloaded(f"a council service is unavailable: {_message(inner)}", retry_after_s=1.0)
    return None


def for_client(error: BaseException) -> BaseException:
    """What a handle caller outside the app sees: the council's own error, Overloaded when full, Unreachable
    when the app is not there or does not answer in time, else the deployment's exception."""
    inner = unwrap(error)
    kind = failure(inner)
    if kind in (Failure.UNAVAILABLE, Failure.SERVE):
        return Unreachable(_message(inner))
    if kind is Failure.TIMEOUT or isinstance(inner, TimeoutError):
        return Unreachable(f"no answer from the council within the timeout: {inner}")
    return inner


def transient(error: BaseException) -> bool:
    """True when another try may succeed: the council (or one replica) was busy or restarting, not wrong."""
    kind = failure(error)
    if kind in (Failure.OVERLOADED, Failure.UNAVAILABLE, Failure.REPLICA_LOST):
        return True
    return isinstance(cause(error), Overloaded)


def _message(error: BaseException) -> str:
    return str(getattr(error, "message", None) or error)
