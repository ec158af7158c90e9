"""Tiny models with random weights (random norms too, so that a swapped norm shows), shared by the checkpoint tests."""
import torch

from llamalab.config import ModelArgs, RopeScaling
from llamalab.model import Transformer

VOCAB = 320
CONFIGS = {
    "llama2-mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=VOCAB, multiple_of=32, max_seq_len=64),
    "gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=32, max_seq_len=64),
    "llama3.1-scaled-tied-mqa": ModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=VOCAB, multiple_of=32, ffn_dim_multiplier=1.3,
        rope_theta=500000.0, max_seq_len=64, tie_embeddings=True,
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=32),
    ),
}
SUFFIX = {"meta": "", "hf": "", "native": "", "gguf": ".gguf", "llama2c": ".bin"}


def random_model(args: ModelArgs, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(args).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@torch.no_grad()
def greedy(model: Transformer, prompt: torch.Tensor, steps: int = 5) -> list[int]:
    """Greedy continuation of a (1, n) prompt through the KV cache."""
    model.setup_cache(batch_size=1, max_seq_len=prompt.shape[1] + steps)
    logits = model(prompt, start_pos=0)
    out = []
    for i in range(steps):
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(token.item())
        logits = model(token, start_pos=prompt.shape[1] + i)
    model.clear_cache()
    return out
