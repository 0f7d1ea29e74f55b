"""The row-wise top-k and top-p warpers give exactly transformers' warpers' results, without
their full-vocabulary sorts for the rows that do not need one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessorList,
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from serving.llm.sampling import (
    GREEDY,
    NO_SEED,
    GreedyAwareList,
    RowSampler,
    RowTopK,
    RowTopP,
    install,
    row_wise,
    seed_for,
)

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


def test_row_sampler_draws_sampled_rows_and_leaves_greedy_ones() -> None:
    sampler = RowSampler()
    x = scores(4, 3)
    arg = torch.tensor([GREEDY, NO_SEED, seed_for(7, 12), seed_for(7, 12), 0, 0],
                       dtype=torch.int32)
    out = sampler(x, arg)
    assert torch.equal(out[0], x[0])  # greedy: the manager's argmax takes the maximum
    for row in (1, 2, 3):  # one-hot: argmax takes the drawn token
        assert int((out[row] > float("-inf")).sum()) == 1
    # The same seed and position draw the same token from the same scores; the input is kept.
    assert int(out[2].argmax()) == int(sampler(x[2:3], arg[2:3])[0].argmax())
    assert torch.equal(x, scores(4, 3))
    assert sampler(x, torch.full((6,), GREEDY, dtype=torch.int32)) is x  # no draw at all


def test_row_sampler_draws_from_the_row_distribution() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    row = probs.log().expand(4000, 4).contiguous()  # one row per draw, unseeded
    picks = RowSampler()(row, torch.full((4000,), NO_SEED, dtype=torch.int32)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / 4000
    assert freq[3] == 0  # a token of probability zero is never drawn
    assert torch.allclose(freq, probs, atol=0.03), freq


def installed(*extra: object) -> ContinuousBatchingLogitsProcessorList:
    """The manager's per-request processor list for a sampling config, after `install`."""
    processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList([
        TemperatureLogitsWarper(0.7), TopKLogitsWarper(VOCAB), TopPLogitsWarper(0.95), *extra,
    ]), per_request_processors=True)
    manager = SimpleNamespace(logit_processor=processors,
                              generation_config=GenerationConfig(do_sample=True))
    install(manager)
    assert manager.generation_config.do_sample is False  # the manager only takes the argmax
    return processors


def test_an_all_greedy_step_skips_the_processors_and_keeps_every_argmax() -> None:
    processors = installed()
    assert type(processors) is GreedyAwareList
    x, ids = scores(6, 4), torch.zeros(6, 1, dtype=torch.long)
    temperature, top_k, top_p = floats([1.0] * 10), torch.full((10,), 1), floats([1.0] * 10)
    args = torch.stack([temperature, top_k.int(), top_p, torch.full((10,), GREEDY).int()])
    assert processors(ids, x, args) is x  # nothing computed
    # What the processors would have done keeps the same argmax in every row.
    full = super(GreedyAwareList, processors).__call__(ids, x, args)
    assert torch.equal(full.argmax(-1), x.argmax(-1))
    assert bool((full == float("-inf")).any())  # ...though they mask every other token
    # One sampled row: the whole list runs (its row becomes one-hot).
    args[3, 2], args[1, 2] = NO_SEED, VOCAB
    out = processors(ids, x, args)
    assert out is not x and int((out[2] > float("-inf")).sum()) == 1


class BanTheMaximum(LogitsProcessor):
    """A processor of the application's own: it moves each row's maximum."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.scatter(-1, scores.argmax(-1, keepdim=True), float("-inf"))


def test_a_list_with_a_processor_that_moves_the_maximum_keeps_running_it() -> None:
    processors = installed(BanTheMaximum())
    assert type(processors) is ContinuousBatchingLogitsProcessorList
    x, ids = scores(2, 5), torch.zeros(2, 1, dtype=torch.long)
    args = torch.stack([floats([1.0] * 2), torch.ones(2, dtype=torch.int32), floats([1.0] * 2),
                        torch.full((2,), GREEDY, dtype=torch.int32)])
    assert not torch.equal(processors(ids, x, args).argmax(-1), x.argmax(-1))
