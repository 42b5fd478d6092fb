"""Ray's exceptions, mapped in one place: each class Ray raises at the council means one thing, pinned here.

A Ray upgrade that renames or moves one of these fails this test, not a 503 that silently turns into a 500.
"""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayTaskError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)

from council.errors import InvalidRequest, Overloaded, Unreachable
from council.serving import ray_errors
from council.serving.ray_errors import Failure

F = Failure
# error -> (kind, what the ingress and HTTP layer make of it, what a handle client sees, worth a retry)
MAPPING: list[tuple[BaseException, Failure | None, type | None, type, bool]] = [
    (BackPressureError(num_queued_requests=9, max_queued_requests=8, retry_after_s=2.5), F.OVERLOADED, Overloaded,
     Overloaded, True),
    (DeploymentUnavailableError(DeploymentID(name="d", app_name="a")), F.UNAVAILABLE, Overloaded, Unreachable, True),
    (ReplicaUnavailableError("r1"), F.UNAVAILABLE, Overloaded, Unreachable, True),
    (ActorDiedError(), F.REPLICA_LOST, None, ActorDiedError, True),
    (ActorUnavailableError("gone", None), F.REPLICA_LOST, None, ActorUnavailableError, True),
    (GetTimeoutError("slow"), F.TIMEOUT, None, Unreachable, False),
    (RayServeException("no such application"), F.SERVE, None, Unreachable, False),
    (ValueError("a bug"), None, None, ValueError, False),
    (Overloaded("full"), None, Overloaded, Overloaded, True),
]  # fmt: skip


@pytest.mark.parametrize(("error", "kind", "council", "client", "transient"), MAPPING, ids=lambda v: type(v).__name__)
def test_each_ray_error_means_one_thing(
    error: BaseException, kind: Failure | None, council: type | None, client: type, transient: bool
) -> None:
    assert ray_errors.failure(error) is kind
    mapped = ray_errors.as_council_error(error)
    assert (type(mapped) if mapped is not None else None) is council
    assert type(ray_errors.for_client(error)) is client
    assert ray_errors.transient(error) is transient


def test_backpressure_keeps_serves_retry_after() -> None:
    error = ray_errors.unwrap(BackPressureError(num_queued_requests=9, max_queued_requests=8, retry_after_s=2.5))
    assert isinstance(error, Overloaded) and error.retry_after_s == 2.5


def _task_error(cause: BaseException) -> RayTaskError:
    return RayTaskError("ask", "Traceback ...", cause, proctitle="ray::ask", pid=1, ip="127.0.0.1")


def test_a_deployments_own_error_comes_out_of_rays_wrappers() -> None:
    wrapped = _task_error(_task_error(InvalidRequest("k=9 is out of range")))
    assert isinstance(ray_errors.cause(wrapped), InvalidRequest)
    assert isinstance(ray_errors.as_council_error(wrapped), InvalidRequest)
    assert isinstance(ray_errors.as_council_error(wrapped.as_instanceof_cause()), InvalidRequest)
    assert ray_errors.transient(_task_error(Overloaded("full")))
