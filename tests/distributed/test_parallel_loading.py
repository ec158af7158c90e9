"""A checkpoint loads straight into a tensor-parallel model, each rank reading its own part, at any TP size."""
from functools import partial

import pytest
import torch
import torch.distributed as dist
from distributed_launch import run_ranks

from llamalab.checkpoint import load, save
from llamalab.checkpoint.parts import read_args, read_parts
from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.parallel.loading import load_tp_model
from llamalab.parallel.mesh import make_mesh

CONFIGS = {  # GQA with 2 KV heads: at tp=4 each KV head is read by two ranks
    "untied": ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=32),
    "tied": ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=32,
                      tie_embeddings=True),
}
TOKENS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))


def random_model(args: ModelArgs) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(args).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)  # not all ones, so that a misplaced norm shows
    return model


def tp_logits(path: str, tp: int, device: str = "cpu") -> torch.Tensor:
    """Logits of TOKENS from the checkpoint at `path` loaded over tp ranks (runs in each rank)."""
    mesh = make_mesh(tp=tp, device_type=torch.device(device).type)
    model = load_tp_model(read_args(path), mesh["tp"], partial(read_parts, path), device, torch.float32)
    with torch.no_grad():
        return model(TOKENS.to(device)).cpu()


@pytest.mark.parametrize("format, config, shards, tp", [
    ("meta", "untied", 2, 1), ("meta", "untied", 2, 2), ("meta", "untied", 2, 4),
    ("hf", "tied", 2, 4), ("native", "tied", 1, 2),
])
def test_checkpoint_loaded_at_any_tensor_parallel_size_gives_the_model_s_logits(tmp_path, format, config, shards, tp):
    model = random_model(CONFIGS[config])
    path = str(save(model, tmp_path / "m", format=format, shards=shards))
    with torch.no_grad():
        expected = model(TOKENS)
    for rank, logits in enumerate(run_ranks(tp_logits, tp, path, tp)):
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0, msg=f"rank {rank}")


def nccl_and_plain_logits(path: str) -> dict:
    """On GPU 0: the checkpoint loaded through NCCL at tp=1, and loaded plainly (runs in the one rank)."""
    with torch.no_grad():
        plain = load(path, device="cuda", dtype=torch.float32)(TOKENS.cuda()).cpu()
    return dict(tp=tp_logits(path, 1, "cuda"), plain=plain, backend=dist.get_backend())


@pytest.mark.gpu
def test_on_a_gpu_the_nccl_path_gives_the_plain_model_s_logits(tmp_path):
    # one GPU allows one NCCL rank: this checks the NCCL group, the CUDA mesh and the loading path, not the split
    path = str(save(random_model(CONFIGS["untied"]), tmp_path / "m", format="meta", shards=2))
    (got,) = run_ranks(nccl_and_plain_logits, 1, path)
    assert got["backend"] == "nccl"
    torch.testing.assert_close(got["tp"], got["plain"], atol=1e-5, rtol=0)
