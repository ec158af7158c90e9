"""Meta's consolidated.NN.pth + params.json: model-parallel shards split as Meta's layers split them."""
import json

import pytest
import torch
from checkpoint_models import CONFIGS, random_model

from llamalab.checkpoint import load, meta, save
from llamalab.checkpoint.weights import model_state_dict
from llamalab.config import ModelArgs

# Meta's fairscale layers: ColumnParallelLinear splits the output rows, RowParallelLinear the input
# columns, ParallelEmbedding the embedding features; RMSNorm weights are copied to every rank.
SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def split_dim(name):
    module = name.split(".")[-2]
    return SPLIT_DIM.get(module)  # None: replicated


@pytest.mark.parametrize("config, shards", [("llama2-mha", 2), ("llama2-mha", 4), ("gqa", 2)])
def test_each_shard_holds_its_rank_slice_and_they_merge_back(tmp_path, config, shards):
    model = random_model(CONFIGS[config])
    full = model_state_dict(model)
    save(model, tmp_path / "m", format="meta", shards=shards)
    files = sorted((tmp_path / "m").glob("consolidated.*.pth"))
    assert [f.name for f in files] == [f"consolidated.{r:02d}.pth" for r in range(shards)]
    for rank, file in enumerate(files):
        shard = torch.load(file, weights_only=True)
        assert shard.keys() == full.keys()
        for name, tensor in full.items():
            dim = split_dim(name)
            expected = tensor if dim is None else tensor.chunk(shards, dim)[rank]
            assert torch.equal(shard[name], expected), (rank, name)
    merged = load(tmp_path / "m")
    single = load(save(model, tmp_path / "single", format="meta"))
    tokens = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        assert torch.equal(merged(tokens), single(tokens))


def test_a_rank_of_another_tensor_parallel_size_reads_its_slices(tmp_path):
    model = random_model(CONFIGS["llama2-mha"])
    full = model_state_dict(model)
    save(model, tmp_path / "m", format="meta", shards=4)
    for rank in range(2):
        _, state = meta.read(tmp_path / "m", tp_rank=rank, tp_size=2)
        for name, tensor in full.items():
            dim = split_dim(name)
            assert torch.equal(state[name], tensor if dim is None else tensor.chunk(2, dim)[rank]), name


def test_params_json_is_meta_s():
    llama31 = ModelArgs.from_preset("llama3.1-8b")
    params = meta.params_json(llama31)
    assert params == {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                      "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0,
                      "use_scaled_rope": True}


def test_an_ffn_size_given_outright_is_written_as_meta_s_rule():
    # HF configs give intermediate_size; Meta's params.json can only say multiple_of / ffn_dim_multiplier
    for dim, hidden in ((4096, 14336), (4096, 11008), (2048, 5632), (8192, 28672), (64, 200)):
        params = meta.params_json(ModelArgs(dim=dim, n_layers=1, n_heads=8, hidden_dim=hidden))
        rebuilt = ModelArgs(dim=dim, n_layers=1, n_heads=8, multiple_of=params["multiple_of"],
                            ffn_dim_multiplier=params["ffn_dim_multiplier"])
        assert rebuilt.ffn_hidden_dim == hidden


def test_reads_a_llama2_release_folder_with_vocab_minus_one_and_rope_freqs(tmp_path):
    """Llama 2's params.json says vocab_size -1 and has no rope_theta; its .pth carries rope.freqs."""
    args = CONFIGS["llama2-mha"]
    model = random_model(args)
    folder = tmp_path / "llama-2-tiny"
    folder.mkdir()
    state = dict(model_state_dict(model), **{"rope.freqs": torch.ones(args.head_dim // 2)})
    torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps(
        {"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-05, "vocab_size": -1}))
    loaded = load(folder)
    assert loaded.args.vocab_size == 320 and loaded.args.rope_theta == 10000.0
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.layers[1].attention.wk.weight, model.layers[1].attention.wk.weight.to(torch.bfloat16))
