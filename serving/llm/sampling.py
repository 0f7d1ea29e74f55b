"""Per-request sampling for transformers' continuous batching.

transformers' per-request processors give each sequence its own temperature, top-k and top-p,
then the manager draws every row with one `multinomial` over the whole batch: greedy rows too
(an exponential draw per vocabulary entry, 7.5% of a 16-stream greedy decode step here,
py-spy), and all rows from one generator, so a request's `seed` would not reproduce once other
requests share its batch. `RowSampler` runs last and draws each sampled row itself with the
Gumbel-max trick (an exact sample from the row's distribution), seeded rows from a generator
keyed by (seed, position), independent of whatever else is in the batch; it leaves a one-hot
row, and the manager, switched to argmax, only takes each row's maximum. Greedy rows cost no
draw at all.

transformers' top-k and top-p warpers sort every row of the vocabulary on every decode step,
whatever the row asks for: two full sorts of (batch, 49k) took 22% of a 16-stream decode step
here (py-spy). Medserve asks top-k for 1 (greedy) or nothing, so `RowTopK` keeps a greedy
row's maximum with one pass and leaves the others alone, and `RowTopP` sorts only the rows
whose top-p is below 1. Both give exactly the warpers' results. And when every row of a step
is greedy, `GreedyAwareList` skips the processors altogether: a positive temperature, top-k and
top-p all keep each row's maximum, which is all the manager's argmax takes (2.5 ms of
full-vocabulary passes in a 16-stream greedy step here, torch profiler).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
    ContinuousBatchingTemperatureLogitsWarper,
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)

NO_SEED = -1  # a sampled row without a seed: drawn from torch's global generator
GREEDY = -2  # top-k 1: the row's maximum, no draw
_MIX = 1_000_003  # odd multiplier: distinct (seed, position) pairs give distinct streams


def seed_for(seed: int, position: int) -> int:
    return (seed * _MIX + position) & 0x7FFFFFFF


def gumbel_max(row: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token drawn from softmax(row): argmax of the row plus Gumbel noise."""
    u = torch.rand(row.size(-1), generator=generator, device=row.device)
    gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
    return int(torch.argmax(row.float() + gumbel))


class RowSampler(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {"seed": int}
    ignored_kwargs: tuple[str, ...] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(NO_SEED)

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
        args = []
        for request in requests_with_new_token:
            kwargs = request.state.logit_processor_kwargs
            seed = kwargs.get("seed")
            if kwargs.get("top_k") == 1:
                args.append(GREEDY)
            elif seed is None:
                args.append(NO_SEED)
            else:
                # position_offset is the sequence length the next token extends: fixed per step
                # for a given prompt, whatever the batch composition or prefill split.
                args.append(seed_for(seed, request.state.position_offset))
        return torch.tensor(args, dtype=torch.int32, device="cpu")

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        draws = tensor_arg[: scores.size(0)].tolist()
        if all(d == GREEDY for d in draws):
            return scores
        scores = scores.clone()
        for row, draw in enumerate(draws):
            if draw == GREEDY:
                continue
            generator = None if draw == NO_SEED else torch.Generator(
                device=scores.device).manual_seed(draw)
            pick = gumbel_max(scores[row], generator)
            scores[row].fill_(float("-inf"))
            scores[row, pick] = 0.0
        return scores


class RowTopK(ContinuousBatchingTopKLogitsWarper):
    """Top-k without a sort for k = 1 (the row's maximum, ties kept) and k = vocabulary (no-op);
    any other k in the batch: the warper's own sort."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        vocab = scores.size(-1)
        top_k = tensor_arg[: scores.size(0)].clamp(max=vocab)
        if bool(((top_k > 1) & (top_k < vocab)).any()):
            return super().__call__(scores, tensor_arg)
        greedy = (top_k == 1).unsqueeze(-1)
        if not bool(greedy.any()):
            return scores
        best = scores.amax(dim=-1, keepdim=True)
        return scores.masked_fill(greedy & (scores < best), self.filter_value)


class RowTopP(ContinuousBatchingTopPLogitsWarper):
    """Top-p that sorts only the rows with top-p below 1 (a top-p of 1 keeps every token that
    has any probability, which is what sampling can pick anyway)."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        top_p = tensor_arg[: scores.size(0)].view(dtype=torch.float32)
        rows = (top_p < 1.0).nonzero().squeeze(-1)
        if rows.numel() in (0, scores.size(0)):
            return scores if rows.numel() == 0 else super().__call__(scores, tensor_arg)
        out = scores.clone()
        out[rows] = super().__call__(scores[rows], top_p[rows].view(dtype=torch.int32))
        return out


ROW_WISE: dict[type, type] = {ContinuousBatchingTopKLogitsWarper: RowTopK,
                              ContinuousBatchingTopPLogitsWarper: RowTopP}


class GreedyAwareList(ContinuousBatchingLogitsProcessorList):
    """The manager's processor list, which leaves the scores alone when every row is greedy.

    Only for lists of temperature, row-wise top-k and top-p, then `RowSampler` (what `install`
    makes): none of them moves a greedy row's maximum, and the manager takes the argmax.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor,
                 logits_processor_args: torch.Tensor) -> torch.Tensor:
        draws = logits_processor_args[self.tensors_required - 1, : scores.size(0)]
        if bool((draws == GREEDY).all()):
            return scores
        return super().__call__(input_ids, scores, logits_processor_args)


KEEP_THE_MAXIMUM = (ContinuousBatchingTemperatureLogitsWarper, RowTopK, RowTopP)


def row_wise(processor: object) -> object:
    """The row-wise twin of transformers' top-k or top-p warper, with its settings."""
    twin = ROW_WISE.get(type(processor))
    if twin is None:
        return processor
    out = copy.copy(processor)
    out.__class__ = twin  # a subclass that only overrides __call__: same state, same layout
    return out


def install(manager: Any) -> None:
    """Swap in the row-wise warpers, append the row sampler to a not-yet-started manager's
    processor list, and switch the manager's own pick to argmax.

    The list's argument storage is sized, and the pick chosen, when the manager starts, so this
    must run before.
    """
    processors = manager.logit_processor
    processors.logits_processor[:] = [row_wise(p) for p in processors.logits_processor]
    processors.logits_processor.append(RowSampler())
    processors.tensors_required += 1
    processors._retrieve_processors_kwargs()
    processors.do_processing = True
    if all(isinstance(p, KEEP_THE_MAXIMUM) for p in processors.logits_processor[:-1]):
        processors.__class__ = GreedyAwareList  # only overrides __call__
    # The warpers above were built because the config samples; from here on rows are drawn by
    # RowSampler and the manager's batch processor (made at start) only takes each row's argmax.
    config = copy.copy(manager.generation_config)
    config.do_sample = False
    manager.generation_config = config
