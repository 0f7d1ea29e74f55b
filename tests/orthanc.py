"""Debian's Orthanc for the hospital-integration tests.

`make test` installs it when it is missing (as root). Where it cannot, the tests that need
it skip, except in CI (`MEDSERVE_REQUIRE_ORTHANC=1`, set by .ci/run), where a missing PACS is
a failure rather than a silently skipped proof.
"""

from __future__ import annotations

import os

import pytest

from serving.testing.orthanc import OrthancProcess, orthanc_binary


def _missing() -> None:
    message = ("Orthanc not found: apt-get install orthanc orthanc-dicomweb (as root), or run "
               "`make test`")
    if os.environ.get("MEDSERVE_REQUIRE_ORTHANC") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require(pacs: OrthancProcess | None) -> OrthancProcess:
    """The session's Orthanc (tests/conftest.py), or skip (fail in CI) without one."""
    if pacs is None:
        _missing()
    assert pacs is not None
    return pacs


def require_installed() -> None:
    if orthanc_binary() is None:
        _missing()
