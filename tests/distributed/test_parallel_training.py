"""One training step under TP and under FSDP2 x TP equals the same step in one process.

Tolerance: loss within 1e-6 and the SGD weight update within 1e-6 absolute (updates are ~1e-3 to 1e-2);
the only differences are the order of float32 sums across ranks.
"""
import pytest
import torch

from distributed_launch import run_ranks
from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.parallel import apply_fsdp, apply_tp, make_mesh

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=32,
                 tie_embeddings=True)
BATCH = torch.randint(0, 128, (4, 9), generator=torch.Generator().manual_seed(1))
LR = 0.5


def seeded_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ARGS)


def sgd_step(model: Transformer, batch: torch.Tensor) -> torch.Tensor:
    """One plain SGD step on the mean next-token loss of `batch` (linear in the gradient, so errors show)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss = model.loss(batch[:, :-1], batch[:, 1:])
    loss.backward()
    optimizer.step()
    return loss.detach()


def parallel_step(dp_shard: int, tp: int, sequence_parallel: bool) -> dict:
    """Split the model over a (dp_shard, tp) mesh, step on this rank's rows of the batch; full loss and weights."""
    mesh = make_mesh(tp=tp, dp_shard=dp_shard)
    model = seeded_model()
    if tp > 1:
        apply_tp(model, mesh["tp"], sequence_parallel=sequence_parallel)
    if dp_shard > 1:
        apply_fsdp(model, mesh["dp_shard"])
    rows = BATCH.shape[0] // dp_shard
    dp_rank = mesh["dp_shard"].get_local_rank()
    loss = sgd_step(model, BATCH[dp_rank * rows:(dp_rank + 1) * rows])
    torch.distributed.all_reduce(loss)
    weights = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    return dict(loss=loss / (dp_shard * tp), weights={k: v.detach().clone() for k, v in weights.items()})


@pytest.mark.parametrize("dp_shard, tp, sequence_parallel", [(1, 2, False), (1, 2, True), (2, 2, False)],
                         ids=["tp2", "tp2-sequence-parallel", "fsdp2xtp2"])
def test_one_training_step_matches_one_process(dp_shard, tp, sequence_parallel):
    model = seeded_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = sgd_step(model, BATCH)
    expected_update = {k: v - before[k] for k, v in model.state_dict().items()}
    for rank, got in enumerate(run_ranks(parallel_step, dp_shard * tp, dp_shard, tp, sequence_parallel)):
        torch.testing.assert_close(got["loss"], loss, atol=1e-6, rtol=0, msg=f"rank {rank}")
        assert got["weights"].keys() == before.keys()
        for name, update in expected_update.items():
            torch.testing.assert_close(got["weights"][name] - before[name], update, atol=1e-6, rtol=0,
                                       msg=lambda m: f"rank {rank} {name}: {m}")
    assert min(u.abs().max() for u in expected_update.values()) > 1e-4  # every weight really moved
