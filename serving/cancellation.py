"""Cooperative cancellation of a request's CPU work in worker threads.

A thread cannot be killed: work a client has given up on (it went away, or its gateway timed
out) would otherwise run to its end. The coroutine that gave up sets a flag; the worker
checks it between chunks (CT instances while decoding, batch chunks and sliding windows while
inferring) and stops with `Cancelled`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")

Stop = Callable[[], bool]  # true once no caller waits for the work's result any more


def never() -> bool:
    return False


class Cancelled(Exception):
    """No caller waits for this work any more: it stopped at its next chunk."""


def check(stop: Stop) -> None:
    if stop():
        raise Cancelled


def checked(forward: Callable[[T], U], stop: Stop) -> Callable[[T], U]:
    """`forward`, refusing to start another chunk or window once `stop()` says no one waits."""

    def run(x: T) -> U:
        check(stop)
        return forward(x)

    return run
