"""Per-request sampling parameters for transformers' continuous batching.

transformers' per-request processors give each sequence its own temperature, top-k and top-p,
but all sequences draw from one generator, so a request's `seed` would not reproduce once
other requests share its batch. `SeededSampler` runs last and, for seeded rows, draws the token
itself with the Gumbel-max trick from a generator keyed by (seed, position): an exact sample
from the same distribution, independent of whatever else is in the batch. It leaves a one-hot
row, which the manager's own multinomial step then picks with probability one.
"""

from __future__ import annotations

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

NO_SEED = -1
_MIX = 1_000_003  # odd multiplier: distinct (seed, position) pairs give distinct streams


def seed_for(seed: int, position: int) -> int:
    return (seed * _MIX + position) & 0x7FFFFFFF


class SeededSampler(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {"seed": int}
    ignored_kwargs: tuple[str, ...] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(NO_SEED)

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
        args = []
        for request in requests_with_new_token:
            seed = request.state.logit_processor_kwargs.get("seed")
            # position_offset is the sequence length the next token extends: fixed per step for
            # a given prompt, whatever the batch composition or prefill split.
            args.append(NO_SEED if seed is None else seed_for(seed, request.state.position_offset))
        return torch.tensor(args, dtype=torch.int32, device="cpu")

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        seeds = tensor_arg[: scores.size(0)].tolist()
        if all(s == NO_SEED for s in seeds):
            return scores
        scores = scores.clone()
        for row, seed in enumerate(seeds):
            if seed == NO_SEED:
                continue
            gen = torch.Generator(device=scores.device).manual_seed(seed)
            u = torch.rand(scores.size(-1), generator=gen, device=scores.device)
            gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
            pick = int(torch.argmax(scores[row].float() + gumbel))
            scores[row].fill_(float("-inf"))
            scores[row, pick] = 0.0
        return scores


def install(manager: object) -> None:
    """Append the seeded sampler to a not-yet-started manager's processor list.

    The list's argument storage is sized when the manager starts, so this must run before.
    """
    processors = manager.logit_processor  # type: ignore[attr-defined]
    processors.logits_processor.append(SeededSampler())
    processors.tensors_required += 1
    processors._retrieve_processors_kwargs()
    processors.do_processing = True
