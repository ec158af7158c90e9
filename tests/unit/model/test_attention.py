import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.model import Transformer, reference_attention, sdpa_attention


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("kind", ["causal", "mask", "none"])
def test_fast_path_equals_reference(n_kv, kind):
    q = torch.randn(2, 4, 5, 8)
    k, v = torch.randn(2, n_kv, 9, 8), torch.randn(2, n_kv, 9, 8)
    mask, causal = None, False
    if kind == "causal":
        k, v, causal = k[:, :, :5], v[:, :, :5], True
    elif kind == "mask":
        mask = torch.rand(2, 1, 5, 9) > 0.3
        mask[..., 0] = True  # every query sees at least one key
    ref = reference_attention(q, k, v, mask=mask, causal=causal)
    fast = sdpa_attention(q, k, v, mask=mask, causal=causal)
    assert torch.allclose(ref, fast, atol=1e-5)


def test_reference_attention_matches_a_hand_computation():
    q = torch.tensor([[[[1.0, 0.0]]]])  # one query, d=2
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    v = torch.tensor([[[[10.0, 0.0], [0.0, 10.0]]]])
    w = torch.softmax(torch.tensor([1.0, 0.0]) / 2 ** 0.5, dim=0)
    out = reference_attention(q, k, v)
    assert torch.allclose(out[0, 0, 0], torch.tensor([10 * w[0], 10 * w[1]]), atol=1e-6)


def test_whole_model_reference_and_sdpa_agree():
    args = ModelArgs.from_preset("debug")
    fast = Transformer(args)
    ref = Transformer(args, attention_impl="reference")
    ref.load_state_dict(fast.state_dict())
    tokens = torch.randint(0, args.vocab_size, (2, 17))
    assert torch.allclose(fast(tokens), ref(tokens), atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights():
    gqa_args = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=100, multiple_of=16)
    mha_args = gqa_args.replace(n_kv_heads=None)
    gqa, mha = Transformer(gqa_args), Transformer(mha_args)
    n_rep, hd = 4, gqa_args.head_dim
    state = {}
    for key, w in gqa.state_dict().items():
        if key.endswith(("attention.wk.weight", "attention.wv.weight")):
            # each KV head's rows repeated for the n_rep query heads of its group
            w = w.view(2, hd, 64).repeat_interleave(n_rep, dim=0).reshape(8 * hd, 64)
        state[key] = w
    mha.load_state_dict(state)
    tokens = torch.randint(0, 100, (2, 11))
    assert torch.allclose(gqa(tokens), mha(tokens), atol=1e-5)
