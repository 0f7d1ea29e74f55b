"""oneDNN-packed linear layers compute what `nn.Linear` computes, on a real transformers model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from serving.llm.packed_linear import PackedLinear, Sibling, SiblingGroup, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch build has no oneDNN")


@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_is_linear(rows: int, bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias)
    x = torch.randn(1, rows, 96)
    with torch.inference_mode():
        packed = PackedLinear.of(linear, batch_hint=16)
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
        layer = model.model.layers[0]
        siblings = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
        assert all(type(m) is Sibling for m in siblings)  # one packed matmul for q, k and v
        assert len({id(m.group) for m in siblings}) == 1
        assert type(layer.mlp.gate_proj) is Sibling and type(layer.mlp.down_proj) is PackedLinear
        got = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12,
                             do_sample=False)
    assert torch.equal(got, expected)
    assert pack_linears(model, batch_hint=16) == 0  # nothing left to pack


def test_pack_linears_leaves_other_dtypes_alone() -> None:
    model = nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16))
    assert pack_linears(model, batch_hint=4) == 0
    assert type(model[0]) is nn.Linear


def test_a_sibling_group_computes_each_linear_on_each_input() -> None:
    """Mixed biases; the outputs are reused only for the very input they came from."""
    torch.manual_seed(0)
    linears = [nn.Linear(32, 24, bias=True), nn.Linear(32, 8, bias=False), nn.Linear(32, 8)]
    a, b = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    with torch.inference_mode():
        group = SiblingGroup(linears, batch_hint=16)
        for x, order in ((a, [0, 1, 2]), (b, [0, 2]), (a, [1, 0, 2])):
            for i in order:
                got = group.output(x, i)
                assert got.shape == (1, 5, linears[i].out_features)
                assert torch.allclose(got, linears[i](x), rtol=1e-5, atol=1e-5)
            assert group.output(b, 1).shape == (1, 5, 8)  # another input: computed anew
            assert torch.allclose(group.output(b, 1), linears[1](b), rtol=1e-5, atol=1e-5)
