"""oneDNN-packed linear layers compute what `nn.Linear` computes, on a real transformers model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from serving.llm.packed_linear import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch build has no oneDNN")


@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_is_linear(rows: int, bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias)
    x = torch.randn(1, rows, 96)
    with torch.inference_mode():
        packed = PackedLinear(linear, batch_hint=16)
        assert torch.allclose(packed(x), linear(x), rtol=1e-5, atol=1e-5)
        assert packed(x).shape == (1, rows, 40)


def test_pack_linears_keeps_the_greedy_tokens() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    x = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        expected = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12,
                                  do_sample=False)
        # 2 layers x (q, k, v, o, gate, up, down) + lm_head
        assert pack_linears(model, batch_hint=16) == 15
        assert not any(type(m) is nn.Linear for m in model.modules())
        got = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12,
                             do_sample=False)
    assert torch.equal(got, expected)
    assert pack_linears(model, batch_hint=16) == 0  # nothing left to pack


def test_pack_linears_leaves_other_dtypes_alone() -> None:
    model = nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16))
    assert pack_linears(model, batch_hint=4) == 0
    assert type(model[0]) is nn.Linear
