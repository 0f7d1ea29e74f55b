"""Retry policy of a call to a model deployment: Serve's failure modes as domain errors, and one
more attempt when the replica died before it answered (inference is idempotent; Serve's router
has dropped the dead replica by then)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)

from serving.errors import MedserveError, Unavailable

log = logging.getLogger("ray.serve")

REPLICA_LOST = "replica_unavailable"  # shed reason of a call whose replica died
T = TypeVar("T")


@contextlib.contextmanager
def serve_errors(name: str) -> Iterator[None]:
    """Serve's failure modes as domain errors (queue timeouts are the caller's to time)."""
    try:
        yield
    except BackPressureError:
        raise Unavailable(
            f"{name} is at capacity; retry later", retry_after_s=1, reason="at_capacity"
        ) from None
    except RayTaskError as exc:
        if isinstance(exc.cause, MedserveError):
            raise exc.cause from None
        if isinstance(exc.cause, RayActorError):  # e.g. a dead actor behind the replica
            raise _replica_lost(name) from None
        raise
    except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError):
        # RayActorError covers ActorDiedError (replica process gone) and
        # ActorUnavailableError (unreachable for now).
        raise _replica_lost(name) from None


def _replica_lost(name: str) -> Unavailable:
    return Unavailable(f"{name} replica unavailable; retry", retry_after_s=1, reason=REPLICA_LOST)


async def once_more_if_replica_lost(
    name: str, method: str, attempt: Callable[[], Awaitable[T]]
) -> T:
    """Run `attempt`; if its replica died before answering, run it once more (Serve's router
    has dropped the dead replica by then). Any other error, or a second loss, propagates."""
    try:
        return await attempt()
    except Unavailable as exc:
        if exc.shed_reason != REPLICA_LOST:
            raise
    log.warning("%s: replica lost during %s; retrying once", name, method)
    return await attempt()
