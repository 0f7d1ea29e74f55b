"""Incremental detokenisation with stop strings, shared by every engine.

Engines hand back token ids; this turns the growing id list into text deltas so that a
streamed reply concatenates to exactly the non-streamed one: nothing past a stop string is
ever emitted, and neither is the start of a possible stop string or half a UTF-8 character.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

REPLACEMENT = "\ufffd"  # what a byte-level decoder shows for an incomplete UTF-8 sequence


@dataclass
class TextStream:
    tokenizer: Any
    stop: Sequence[str] = ()
    text: str = ""
    stopped: bool = False
    _emitted: int = field(default=0, repr=False)

    def update(self, token_ids: Sequence[int], final: bool = False) -> str:
        """Feed all ids generated so far; return the text that can now be emitted."""
        if self.stopped:
            return ""
        full = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        cut = self._first_stop(full)
        if cut is not None:
            full, self.stopped, final = full[:cut], True, True
        ready = len(full) if final else self._safe_length(full)
        self.text = full
        delta = full[self._emitted:ready]
        self._emitted = max(self._emitted, ready)
        return delta

    def _first_stop(self, full: str) -> int | None:
        hits = [i for s in self.stop if s and (i := full.find(s)) >= 0]
        return min(hits) if hits else None

    def _safe_length(self, full: str) -> int:
        """Length that cannot change with more tokens: hold back a partial char or stop prefix."""
        end = len(full)
        while end > self._emitted and full[end - 1] == REPLACEMENT:
            end -= 1
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):
                if full[:end].endswith(s[:k]):
                    end -= k
                    break
        return max(end, self._emitted)
