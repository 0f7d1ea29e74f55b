"""varlen_sdpa against transformers' own SDPA path on continuous batching's packed layout."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers.generation.continuous_batching.utils import build_attention_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from serving.llm.varlen_attention import plan, varlen_sdpa, write_only_update

HEADS, KV_HEADS, DIM = 6, 2, 16


def packed_batch(q_lens: list[int], k_lens: list[int], seed: int = 0) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32)
    q_total, k_total = int(cu_q[-1]), int(cu_k[-1])
    query = torch.randn(1, HEADS, q_total, DIM, generator=g)
    # Keys as the paged cache returns them: gathered (tokens, kv heads, dim), viewed transposed
    key = torch.randn(k_total, KV_HEADS, DIM, generator=g).transpose(0, 1).unsqueeze(0)
    value = torch.randn(k_total, KV_HEADS, DIM, generator=g).transpose(0, 1).unsqueeze(0)
    mask = torch.full((1, 1, q_total, k_total), torch.finfo(torch.float32).min)
    build_attention_mask(mask, cu_q.tolist(), cu_k.tolist())
    return query, key, value, mask, cu_q, cu_k


def module() -> SimpleNamespace:
    return SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True)


@pytest.mark.parametrize(
    ("q_lens", "k_lens"),
    [
        ([1] * 5, [7, 30, 1, 12, 64]),  # decode only
        ([1, 9, 1], [20, 9, 33]),  # a fresh prefill between decode rows
        ([4, 1, 6], [10, 5, 6]),  # a prefill chunk with cached keys before it
        ([12], [12]),  # one prefill, nothing else
    ],
)
def test_matches_transformers_sdpa(q_lens: list[int], k_lens: list[int]) -> None:
    query, key, value, mask, cu_q, cu_k = packed_batch(q_lens, k_lens)
    kwargs = {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k, "read_index": [], "is_causal": False}
    expected, _ = sdpa_attention_forward(module(), query, key, value, mask, scaling=0.25,
                                         **kwargs)
    got, _ = varlen_sdpa(module(), query, key, value, mask, scaling=0.25, **kwargs)
    assert got.shape == expected.shape == (1, sum(q_lens), HEADS, DIM)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def written_to_cache(key: torch.Tensor, value: torch.Tensor, cu_k: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed keys as the paged cache holds them: scattered over its slots, each sequence's
    last key written by this step (`write_only_update` on a real allocator's update)."""
    k_total = key.shape[2]
    slots = 3 * k_total
    read_index = torch.randperm(slots, generator=torch.Generator().manual_seed(1))[:k_total]
    k_cache, v_cache = (torch.zeros(slots, KV_HEADS, DIM) for _ in range(2))
    rows = [key[0].transpose(0, 1), value[0].transpose(0, 1)]  # (tokens, kv heads, dim)
    last = cu_k[1:].long() - 1
    older = torch.ones(k_total, dtype=torch.bool)
    older[last] = False
    k_cache[read_index[older]], v_cache[read_index[older]] = rows[0][older], rows[1][older]
    allocator = SimpleNamespace(_kv_token_views={3: (k_cache, v_cache)})
    k, v = write_only_update(allocator, rows[0][last], rows[1][last], 3,  # type: ignore[arg-type]
                             read_index, read_index[last])
    assert k.data_ptr() == k_cache.data_ptr()  # the whole cache, not a gather
    # as PagedAttentionCache.update hands them on: (1, kv heads, cache slots, dim)
    return k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0), read_index


@pytest.mark.parametrize(("q_lens", "k_lens"), [([1] * 5, [7, 30, 1, 12, 64]),
                                                ([4, 1, 6], [10, 5, 6])])
@pytest.mark.parametrize("lengths", [True, False])
def test_keys_left_in_the_cache_are_read_once_by_attention(
        q_lens: list[int], k_lens: list[int], lengths: bool) -> None:
    """With the per-sequence lengths the read is varlen_sdpa's; without, it gathers for the
    stock function. Either way the result is the packed keys' attention."""
    query, key, value, mask, cu_q, cu_k = packed_batch(q_lens, k_lens)
    kwargs: dict[str, Any] = {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k, "read_index": [],
                              "is_causal": False}
    expected, _ = sdpa_attention_forward(module(), query, key, value, mask, scaling=0.25,
                                         **kwargs)
    k_cache, v_cache, _ = written_to_cache(key, value, cu_k)
    if not lengths:
        kwargs = {"is_causal": False}
    got, _ = varlen_sdpa(module(), query, k_cache, v_cache, mask, scaling=0.25, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_call_without_sequence_lengths_goes_to_transformers() -> None:
    query, key, value, _, _, _ = packed_batch([4], [4])
    expected, _ = sdpa_attention_forward(module(), query, key, value, None, is_causal=True)
    got, _ = varlen_sdpa(module(), query, key, value, None, is_causal=True)
    torch.testing.assert_close(got, expected)


def test_plan_pads_each_decode_row_to_the_longest() -> None:
    p = plan([0, 1, 4, 5], [0, 3, 7, 8])  # decode, a 3-token chunk after 1 cached key, decode
    assert p.decode_rows.tolist() == [0, 4]
    assert p.key_valid[:, 0, 0].tolist() == [[True, True, True], [True, False, False]]
    assert p.key_index.view(2, 3)[0].tolist() == [0, 1, 2]
    assert p.key_index.view(2, 3)[1, 0] == 7
    assert p.chunks == ((1, 4, 3, 7),)
    assert not p.all_decode
