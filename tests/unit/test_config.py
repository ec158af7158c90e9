import pytest
import torch

from llamalab.config import PRESETS, ModelArgs
from llamalab.errors import ConfigError
from llamalab.model import Transformer


@pytest.mark.parametrize(
    "preset, hidden",
    [("llama2-7b", 11008), ("llama2-13b", 13824), ("llama2-70b", 28672), ("llama3-8b", 14336),
     ("llama3.1-405b", 53248), ("llama3.2-1b", 8192), ("stories15M", 768)],
)
def test_ffn_hidden_size_rule_matches_published_models(preset, hidden):
    assert ModelArgs.from_preset(preset).ffn_hidden_dim == hidden


def test_hidden_size_rule_rounds_up_not_down():
    # int(2*4*100/3) = 266 -> next multiple of 64 is 320 (rounding down would give 256)
    assert ModelArgs(dim=100, n_heads=2, n_layers=1, multiple_of=64).ffn_hidden_dim == 320


@pytest.mark.parametrize(
    "preset, count",
    [("llama2-7b", 6_738_415_616), ("llama2-13b", 13_015_864_320), ("llama3-8b", 8_030_261_248),
     ("stories15M", 15_191_712)],
)
def test_parameter_count_of_meta_device_model(preset, count):
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_on_meta_device(preset):
    args = ModelArgs.from_preset(preset)
    with torch.device("meta"):
        model = Transformer(args)
    assert model.output.weight.shape == (args.vocab_size, args.dim)
    assert (model.output.weight is model.tok_embeddings.weight) == args.tie_embeddings


def test_head_dim_zero_is_a_clear_error():
    with pytest.raises(ConfigError, match="n_heads"):
        ModelArgs(dim=8, n_layers=2, n_heads=32)


@pytest.mark.parametrize(
    "fields, word",
    [(dict(dim=64, n_heads=4, n_kv_heads=3), "n_kv_heads"), (dict(dim=24, n_heads=8), "even"),
     (dict(dim=0), "dim"), (dict(vocab_size=-1), "vocab_size"), (dict(dropout=1.5), "dropout"),
     (dict(n_kv_heads=0), "n_kv_heads")],
)
def test_invalid_fields_are_named(fields, word):
    with pytest.raises(ConfigError, match=word):
        ModelArgs(**{"n_layers": 1, **fields})


def test_unknown_preset_and_field_are_named():
    with pytest.raises(ConfigError, match="stories15M"):
        ModelArgs.from_preset("llama9")
    with pytest.raises(ConfigError, match="n_kv"):
        ModelArgs.from_dict({"dim": 64, "n_kv": 2})


def test_config_survives_a_json_round_trip():
    import json

    args = ModelArgs.from_preset("llama3.1-8b")
    again = ModelArgs.from_dict(json.loads(json.dumps(args.to_dict())))
    assert again == args and again.rope_scaling.factor == 8.0
