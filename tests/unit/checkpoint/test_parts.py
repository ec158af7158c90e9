"""read_parts: any rank's part of each weight, from Meta (any shard count), HF and native folders."""
import pytest
import torch
from checkpoint_models import CONFIGS, random_model

from llamalab.checkpoint import read, save
from llamalab.checkpoint.parts import read_args, read_parts
from llamalab.checkpoint.weights import model_state_dict
from llamalab.errors import CheckpointError
from llamalab.parts import Part


@pytest.mark.parametrize("format, shards", [("meta", 1), ("meta", 2), ("hf", 2), ("native", 1)])
@pytest.mark.parametrize("config", ["gqa", "llama3.1-scaled-tied-mqa"])
def test_parts_along_either_dim_are_the_chunks_of_the_full_weights(tmp_path, format, shards, config):
    model = random_model(CONFIGS[config])
    path = save(model, tmp_path / "m", format=format, shards=shards)
    assert read_args(path) == read(path)[0]
    full = model_state_dict(model)
    whole = read_parts(path, dict.fromkeys(full))
    assert all(torch.equal(whole[name], tensor) for name, tensor in full.items())
    for dim in (0, 1):
        # parts hold whole heads (HF permutes q/k rows within a head): a single KV head is not split
        names = [n for n, t in full.items() if t.dim() > dim and not (n.endswith("wk.weight") and dim == 0
                                                                      and model.args.kv_heads == 1)]
        halves = [read_parts(path, {name: Part(dim, i, 2) for name in names}) for i in range(2)]
        for name in names:
            assert torch.equal(torch.cat([half[name] for half in halves], dim), full[name]), (name, dim)

def test_a_missing_tensor_is_a_checkpoint_error(tmp_path):
    path = save(random_model(CONFIGS["gqa"]), tmp_path / "m", format="native")
    with pytest.raises(CheckpointError, match="layers.7.attention.wq.weight"):
        read_parts(path, {"layers.7.attention.wq.weight": None})
