"""The row-wise top-k and top-p warpers give exactly transformers' warpers' results, without
their full-vocabulary sorts for the rows that do not need one."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from serving.llm.sampling import RowTopK, RowTopP, row_wise

VOCAB = 2000


def scores(rows: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(rows, VOCAB, generator=gen) * 4
    out[0, :3] = out[0].max() + 1  # a tie at the top: greedy keeps every tied maximum
    return out


def floats(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(dtype=torch.int32)


@pytest.mark.parametrize("top_ks", [[1, VOCAB, 1, VOCAB, 1, VOCAB], [1] * 6, [VOCAB] * 6,
                                    [1, 5, VOCAB, 40, 1, VOCAB]])
def test_row_top_k_is_the_warper(top_ks: list[int]) -> None:
    warper = ContinuousBatchingTopKLogitsWarper(TopKLogitsWarper(top_k=VOCAB))
    fast = row_wise(warper)
    assert isinstance(fast, RowTopK) and fast.filter_value == warper.filter_value
    x, arg = scores(len(top_ks), 1), torch.tensor(top_ks + [VOCAB] * 4, dtype=torch.int32)
    expected = warper(x, arg)
    assert torch.equal(fast(x, arg), expected)
    if top_ks[0] == 1:  # the tie at the top survives greedy
        assert int((expected[0] > float("-inf")).sum()) == 3


@pytest.mark.parametrize("top_ps", [[1.0, 0.9, 1.0, 0.5, 1.0, 0.95], [1.0] * 6, [0.8] * 6])
def test_row_top_p_is_the_warper(top_ps: list[float]) -> None:
    warper = ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(top_p=0.95))
    fast = row_wise(warper)
    assert isinstance(fast, RowTopP)
    x = scores(len(top_ps), 2)
    x[2, 10:] = float("-inf")  # a greedy row after top-k: nothing left for top-p to remove
    arg = floats(top_ps + [1.0] * 4)
    expected = warper(x, arg)
    got = fast(x, arg)
    assert torch.equal(got, expected)
    if any(p < 1 for p in top_ps):  # the test can fail: top-p removed something
        assert bool((got == float("-inf")).sum() > (x == float("-inf")).sum())
