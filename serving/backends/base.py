"""Inference backends: run a list of preprocessed input tensors, return one output per input.

The contract is list-in/list-out (LitServe/KServe style); `check_outputs` enforces it so a
backend that drops or duplicates an item fails loudly instead of mis-attributing results.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    async def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...

    def ready(self) -> bool: ...


def check_outputs(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> list[np.ndarray]:
    if len(outputs) != len(inputs):
        raise RuntimeError(f"backend returned {len(outputs)} outputs for {len(inputs)} inputs")
    for x, y in zip(inputs, outputs, strict=True):
        if y.shape[0] != x.shape[0]:
            raise RuntimeError("backend output batch size differs from its input")
    return outputs
