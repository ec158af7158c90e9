"""Tensor parallelism on 2 and 4 CPU processes (gloo) computes what the plain single-process model computes."""
import pytest
import torch
from distributed_launch import run_ranks

from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.parallel.mesh import make_mesh
from llamalab.parallel.tensor_parallel import apply_tp

TINY = dict(dim=64, n_layers=2, vocab_size=128, multiple_of=32, max_seq_len=32)
CONFIGS = {
    "mha": ModelArgs(**TINY, n_heads=4),
    "gqa-tied": ModelArgs(**TINY, n_heads=8, n_kv_heads=2, tie_embeddings=True),  # at tp=4: KV heads replicated
}
TOKENS = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))


def seeded_model(args: ModelArgs) -> Transformer:
    torch.manual_seed(0)
    return Transformer(args).eval()


def greedy(model: Transformer, prompt: torch.Tensor, n_new: int) -> torch.Tensor:
    """Prefill the prompt into the KV cache, then decode n_new tokens by argmax."""
    model.setup_cache(prompt.shape[0], prompt.shape[1] + n_new)
    tokens, start = prompt, 0
    for _ in range(n_new):
        next_token = model(tokens[:, start:], start_pos=start)[:, -1].argmax(-1, keepdim=True)
        start = tokens.shape[1]
        tokens = torch.cat([tokens, next_token], dim=1)
    model.clear_cache()
    return tokens[:, prompt.shape[1]:]


@torch.no_grad()
def outputs(model: Transformer) -> dict:
    """Logits of a causal pass, of prefill + decode on the KV cache (shared and per-row positions), greedy tokens."""
    model.setup_cache(2, 16)
    prefill = model(TOKENS[:, :5], start_pos=0)
    decode = model(TOKENS[:, 5:6], start_pos=5)
    decode_per_row = model(TOKENS[:, 6:7], start_pos=torch.tensor([6, 6]))
    cache_heads = model.layers[0].attention.cache.k.shape[1]
    model.clear_cache()
    return dict(logits=model(TOKENS), cached=torch.cat([prefill, decode, decode_per_row], dim=1),
                greedy=greedy(model, TOKENS[:, :3], 6), cache_heads=cache_heads)


def tp_outputs(name: str, tp: int) -> dict:
    """`outputs` of the model split over tp ranks (runs in each rank)."""
    return outputs(apply_tp(seeded_model(CONFIGS[name]), make_mesh(tp=tp, device_type="cpu")["tp"]))


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("name", CONFIGS)
def test_tensor_parallel_logits_and_greedy_tokens_equal_one_process(name, tp):
    args = CONFIGS[name]
    expected = outputs(seeded_model(args))
    for rank, got in enumerate(run_ranks(tp_outputs, tp, name, tp)):
        torch.testing.assert_close(got["logits"], expected["logits"], atol=1e-5, rtol=0, msg=f"rank {rank}")
        torch.testing.assert_close(got["cached"], expected["logits"], atol=1e-5, rtol=0, msg=f"rank {rank}")
        assert torch.equal(got["greedy"], expected["greedy"]), f"rank {rank}"
        assert got["cache_heads"] == max(args.kv_heads // tp, 1)  # each rank caches only its own KV heads
