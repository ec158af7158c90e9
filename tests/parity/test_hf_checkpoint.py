"""HF checkpoints both ways against transformers itself, and GGUF's q/k layout against llama.cpp's converter."""
import gguf
import numpy as np
import pytest
import torch
import transformers  # noqa: E402  (a test dependency: failing to import it must fail the run, not skip)

from llamalab.checkpoint import convert, load, save  # noqa: E402
from llamalab.checkpoint.hf import hf_config  # noqa: E402
from llamalab.config import ModelArgs, RopeScaling  # noqa: E402
from llamalab.model import Transformer  # noqa: E402

CONFIGS = {
    "llama2-mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=128, multiple_of=32, max_seq_len=64),
    "llama3.1-gqa-scaled": ModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, ffn_dim_multiplier=1.3,
        rope_theta=500000.0, max_seq_len=64, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32)),
    "tied-mqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=128, multiple_of=32,
                          max_seq_len=64, tie_embeddings=True),
}
TOKENS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))


def random_hf_model(args):
    config = transformers.LlamaConfig(**hf_config(args))
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loads_what_transformers_saves(tmp_path, name):
    hf = random_hf_model(CONFIGS[name])
    hf.save_pretrained(tmp_path, max_shard_size="40KB")  # several model-0000i-of-0000n files + index
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = load(tmp_path)
    with torch.no_grad():
        assert torch.allclose(ours(TOKENS), hf(TOKENS).logits, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shards", [1, 3])
def test_transformers_loads_what_we_save(tmp_path, name, shards):
    torch.manual_seed(2)
    ours = Transformer(CONFIGS[name]).eval()
    save(ours, tmp_path, format="hf", shards=shards)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(hf(TOKENS).logits, ours(TOKENS), atol=1e-5)


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py undoes HF's q/k row permutation like this."""
    pairs = weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weights.shape)


def test_gguf_q_and_k_are_what_llama_cpp_makes_of_hf_weights(tmp_path):
    hf = random_hf_model(CONFIGS["llama3.1-gqa-scaled"])
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "m.gguf", "gguf")
    tensors = {t.name: t.data for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    for i in range(2):
        attn = f"model.layers.{i}.self_attn"
        assert np.array_equal(tensors[f"blk.{i}.attn_q.weight"], llama_cpp_permute(state[f"{attn}.q_proj.weight"], 4))
        assert np.array_equal(tensors[f"blk.{i}.attn_k.weight"], llama_cpp_permute(state[f"{attn}.k_proj.weight"], 2))
        assert np.array_equal(tensors[f"blk.{i}.attn_v.weight"], state[f"{attn}.v_proj.weight"])
