"""One training step under TP and under FSDP2 x TP (with sequence parallelism) equals the same step in one process.

Tolerance: loss and gradient norm within 1e-6, the SGD weight update within 1e-6 absolute (updates are
1e-4 to 1e-2); the only differences are the order of float32 sums across ranks.
"""
import contextlib

import pytest
import torch
from distributed_launch import run_ranks
from torch.distributed.tensor.parallel import loss_parallel

from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.parallel.fsdp import apply_fsdp_tp
from llamalab.parallel.mesh import make_mesh
from llamalab.parallel.tensor_parallel import apply_tp

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=32,
                 tie_embeddings=True)
BATCH = torch.randint(0, 128, (4, 9), generator=torch.Generator().manual_seed(1))
LR = 1.0
MAX_NORM = 1.0  # below the gradient's norm (about 2.5): clipping scales every gradient


def seeded_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ARGS)


def sgd_step(model: Transformer, batch: torch.Tensor, split_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One clipped SGD step on the mean next-token loss of `batch` (linear in the gradient, so errors show).

    `split_loss`: the model keeps its logits split by vocabulary; the loss and backward run in `loss_parallel`.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with loss_parallel() if split_loss else contextlib.nullcontext():
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        loss = loss.full_tensor() if split_loss else loss
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    optimizer.step()
    return loss.detach(), norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def parallel_step(dp_shard: int, tp: int, split_loss: bool) -> dict:
    """Split the model over a (dp_shard, tp) mesh, step on this rank's rows of the batch; full loss and weights."""
    mesh = make_mesh(tp=tp, dp_shard=dp_shard, device_type="cpu")
    model = apply_fsdp_tp(seeded_model(), mesh, loss_parallel=split_loss)
    logits_layouts = []
    model.output.register_forward_hook(lambda module, args, out: logits_layouts.append(
        [str(p) for p in out.placements] if hasattr(out, "placements") else "whole"))
    rows = BATCH.shape[0] // dp_shard
    dp_rank = mesh["dp_shard"].get_local_rank()
    loss, norm = sgd_step(model, BATCH[dp_rank * rows:(dp_rank + 1) * rows], split_loss)
    torch.distributed.all_reduce(loss)
    weights = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    return dict(loss=loss / (dp_shard * tp), norm=norm, weights={k: v.detach().clone() for k, v in weights.items()},
                logits_layouts=logits_layouts)


@pytest.mark.parametrize("dp_shard, tp, split_loss", [(1, 2, False), (2, 2, False), (2, 2, True)],
                         ids=["tp2", "fsdp2xtp2", "fsdp2xtp2-loss-parallel"])
def test_one_training_step_matches_one_process(dp_shard, tp, split_loss):
    model = seeded_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, norm = sgd_step(model, BATCH)
    assert norm > MAX_NORM
    expected_update = {k: v - before[k] for k, v in model.state_dict().items()}
    for rank, got in enumerate(run_ranks(parallel_step, dp_shard * tp, dp_shard, tp, split_loss)):
        torch.testing.assert_close(got["loss"], loss, atol=1e-6, rtol=0, msg=f"rank {rank}")
        torch.testing.assert_close(got["norm"], norm, atol=1e-6, rtol=0, msg=f"rank {rank}")
        assert got["logits_layouts"] == ([["S(2)"]] if split_loss else ["whole"])  # split by vocabulary, or gathered
        assert got["weights"].keys() == before.keys()
        for name, update in expected_update.items():
            torch.testing.assert_close(got["weights"][name] - before[name], update, atol=1e-6, rtol=0,
                                       msg=lambda m: f"rank {rank} {name}: {m}")  # noqa: B023 (called here)
    assert min(u.abs().max() for u in expected_update.values()) > 1e-4  # every weight really moved


def sequence_parallel_loss(length: int) -> None:
    model = apply_tp(seeded_model(), make_mesh(tp=2, device_type="cpu")["tp"], sequence_parallel=True)
    model.loss(BATCH[:, :length], BATCH[:, 1:length + 1])


def test_sequence_parallel_refuses_a_length_tp_does_not_divide():
    with pytest.raises(Exception, match="sequence length \\(7\\) must be a multiple of tp=2"):
        run_ranks(sequence_parallel_loss, 2, 7)
