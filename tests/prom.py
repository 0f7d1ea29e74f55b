"""Debian's `prometheus` and `promtool` for the tests, and polling with a deadline.

`make test` installs the package when it is missing (as root). Where it cannot, the tests
that need it skip, except in CI (`MEDSERVE_REQUIRE_PROMETHEUS=1`, set by .ci/run), where a
missing binary is a failure rather than a silently skipped proof.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: apt-get install prometheus (as root), or run `make test`"
        if os.environ.get("MEDSERVE_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def eventually(check: Callable[[], T], timeout_s: float = 60.0, every_s: float = 0.25) -> T:
    """Call `check` until it stops raising AssertionError; re-raise the last one at the deadline.
    Metrics travel replica -> Ray agent (1 s reports) -> Prometheus (1 s scrapes, 1 s rule
    evaluation), so each value appears after a few seconds, not at a fixed time."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(every_s)  # polling interval, not synchronisation


def ensure(condition: bool, message: object = None) -> None:
    """`assert` as an expression, for `eventually(lambda: ensure(...))`."""
    assert condition, message
