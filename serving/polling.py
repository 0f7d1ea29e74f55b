"""Waiting for something to become true (a server ready, a deployment running): tenacity's
retry on a result, with a deadline, as one call."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tenacity import (
    RetryError,
    Retrying,
    retry_if_result,
    stop_after_delay,
    stop_when_event_set,
    wait_fixed,
)
from tenacity.stop import stop_base


def poll_until(
    check: Callable[[], bool], timeout_s: float, every_s: float,
    cancel: threading.Event | None = None,
) -> None:
    """Call `check` every `every_s` until it returns True. Exceptions it raises propagate at
    once (a process that exited is no reason to keep waiting); past `timeout_s`, or once
    `cancel` is set, raises TimeoutError."""
    stop: stop_base = stop_after_delay(timeout_s)
    if cancel is not None:
        stop = stop | stop_when_event_set(cancel)
    not_yet = retry_if_result(lambda ok: not ok)
    try:
        Retrying(retry=not_yet, stop=stop, wait=wait_fixed(every_s))(check)
    except RetryError:
        raise TimeoutError(f"not done within {timeout_s:g} s") from None
