"""Request priority: `X-Priority: stat | urgent | routine`, capped by the tenant's allowance.

`stat` is a clinical emergency read, `urgent` same-day, `routine` everything else (the
default). Under overload the gateway's admission control (serving/gateway/admission.py)
serves higher priorities first and sheds the lowest first.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from serving.errors import InvalidInput
from serving.protocol.headers import PRIORITY as PRIORITY_HEADER


class Priority(IntEnum):
    """Ordered so that `Priority.STAT > Priority.URGENT > Priority.ROUTINE`."""

    ROUTINE = 0
    URGENT = 1
    STAT = 2

    @property
    def label(self) -> str:
        """The header value and metric label: `stat`, `urgent` or `routine`."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Priority:
        return cls[label.upper()]


PRIORITIES = tuple(p.label for p in sorted(Priority, reverse=True))  # metric label values
DEFAULT_PRIORITY = Priority.ROUTINE.label
_ACCEPTED = ", ".join(PRIORITIES)


def parse_priority(value: str | None, tenant: Any = None) -> Priority:
    """The priority a request asked for, lowered to `tenant.max_priority` when a tenant is
    known (auth on); `None` or an empty header means routine. Unknown values are a 400 that
    names the accepted ones (never echoing the client's text)."""
    text = (value or "").strip().lower() or DEFAULT_PRIORITY
    try:
        asked = Priority.from_label(text)
    except KeyError:
        raise InvalidInput(f"{PRIORITY_HEADER} must be one of {_ACCEPTED}") from None
    allowed = getattr(tenant, "max_priority", None) if tenant is not None else None
    if allowed is None:
        return asked
    return min(asked, Priority.from_label(str(allowed)))
