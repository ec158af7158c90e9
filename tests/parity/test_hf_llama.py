"""Logits equal Hugging Face transformers' LlamaForCausalLM on the same weights."""
import pytest
import torch
import transformers  # noqa: E402  (a test dependency: failing to import it must fail the run, not skip)

from llamalab.checkpoint.hf import args_from_hf_config, from_hf_state_dict, hf_config, to_hf_state_dict  # noqa: E402
from llamalab.config import ModelArgs, RopeScaling  # noqa: E402
from llamalab.model import Transformer  # noqa: E402

CONFIGS = {
    "llama2-mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=128, multiple_of=32, max_seq_len=64),
    "llama3-gqa-scaled": ModelArgs(
        dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, ffn_dim_multiplier=1.3,
        rope_theta=500000.0, max_seq_len=256,  # head_dim 32: wavelengths 872 and 1984 lie in the blend band (512, 2048)
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=2048),
    ),
    "tied-mqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=128, multiple_of=32,
                          max_seq_len=64, tie_embeddings=True),
}


def hf_model(args: ModelArgs):
    config = transformers.LlamaConfig(**hf_config(args))
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norm weights too, so that a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def hf_and_ours(args: ModelArgs):
    """A random HF model and ours holding the same weights (mapped over by the checkpoint key map)."""
    hf = hf_model(args)
    ours = Transformer(args).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), args), strict=not args.tie_embeddings)
    return hf, ours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name):
    args = CONFIGS[name]
    hf, ours = hf_and_ours(args)
    tokens = torch.randint(0, args.vocab_size, (2, 48))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_decode_matches_transformers(name):
    args = CONFIGS[name]
    hf, ours = hf_and_ours(args)
    tokens = torch.randint(0, args.vocab_size, (1, 20))
    with torch.no_grad():
        expected = hf(tokens).logits
        ours.setup_cache(batch_size=1, max_seq_len=32)
        got = [ours(tokens[:, :15], start_pos=0)]
        got += [ours(tokens[:, i:i + 1], start_pos=i) for i in range(15, 20)]
    assert torch.allclose(torch.cat(got, 1), expected, atol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_weights_map_back_to_transformers_exactly(name):
    args = CONFIGS[name]
    hf = hf_model(args)
    ours = from_hf_state_dict(hf.state_dict(), args)
    back = to_hf_state_dict(ours, args)
    hf_state = {k: v for k, v in hf.state_dict().items() if not (args.tie_embeddings and k == "lm_head.weight")}
    assert back.keys() == hf_state.keys()
    assert all(torch.equal(back[k], hf_state[k]) for k in back)
    loaded = args_from_hf_config(hf.config.to_dict())
    fields = ("dim", "n_layers", "n_heads", "kv_heads", "vocab_size", "ffn_hidden_dim", "norm_eps", "rope_theta",
              "rope_scaling", "max_seq_len", "tie_embeddings")
    assert {f: getattr(loaded, f) for f in fields} == {f: getattr(args, f) for f in fields}
