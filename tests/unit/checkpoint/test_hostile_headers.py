"""Issue 21: a header's sizes are checked against the tensors and bytes really there before anything is built,
and wrong types in config.json / params.json / GGUF metadata are one CheckpointError, not a traceback."""
import time

import gguf
import pytest
from checkpoint_models import CONFIGS, random_model
from mutate import rewrite_gguf, rewrite_json, rewrite_llama2c_header

from llamalab.checkpoint import hf, load, save
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError, ConfigError

U32, F32, STR = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIGS["gqa"])


def refused_quickly(path, match: str):
    """load(path) raises CheckpointError matching `match` within a few seconds (not minutes of building)."""
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=match):
        load(path)
    assert time.monotonic() - start < 10, "the header sized work before it was checked"


def test_a_llama2c_header_with_20000_layers_is_refused_by_the_file_size(tmp_path, model):
    path = save(model, tmp_path / "m.bin", format="llama2c")
    rewrite_llama2c_header(path, dim=2, hidden_dim=2, n_heads=1, n_kv_heads=1, n_layers=20000)  # 2 x 20000 < size
    refused_quickly(path, "header describes 641,282 weights")


def test_a_llama2c_header_with_a_huge_max_seq_len_is_refused(tmp_path, model):
    path = save(model, tmp_path / "m.bin", format="llama2c")
    rewrite_llama2c_header(path, max_seq_len=2**31 - 1)
    refused_quickly(path, "header describes")


def test_an_hf_config_with_a_million_layers_is_refused_by_the_tensors_present(tmp_path, model):
    path = save(model, tmp_path / "m", format="hf")
    rewrite_json(path, "config.json", {"num_hidden_layers": 10**6})
    refused_quickly(path, r"n_layers=1000000 but the file holds tensors of layers 0\.\.1")


def test_a_gguf_block_count_of_a_million_is_refused_by_the_tensors_present(tmp_path, model):
    src = save(model, tmp_path / "m.gguf", format="gguf", dtype="float32")
    path = rewrite_gguf(src, tmp_path / "bad.gguf", {"llama.block_count": (10**6, U32)})
    refused_quickly(path, "n_layers=1000000")


@pytest.mark.parametrize("fmt, file, change", [
    ("hf", "config.json", {"rope_theta": "abc"}),
    ("hf", "config.json", {"rms_norm_eps": "1e-5"}),
    ("hf", "config.json", {"hidden_size": "64"}),
    ("hf", "config.json", {"rope_scaling": "llama3"}),
    ("hf", "config.json", {"rope_scaling": {"rope_type": "llama3", "factor": "8"}}),
    ("meta", "params.json", {"norm_eps": "1e-5"}),
    ("meta", "params.json", {"rope_theta": "abc"}),
    ("meta", "params.json", {"n_layers": 2.5}),
    ("meta", "params.json", {"ffn_dim_multiplier": 1e-9}),
    ("native", "llamalab.json", {"model_args": {"dim": "64"}}),
])
def test_wrong_types_in_a_config_file_are_one_checkpoint_error(tmp_path, model, fmt, file, change):
    path = save(model, tmp_path / "m", format=fmt)
    rewrite_json(path, file, change)
    with pytest.raises(CheckpointError, match=file):
        load(path)


@pytest.mark.parametrize("key, value", [
    ("llama.attention.layer_norm_rms_epsilon", ("1e-5", STR)),
    ("llama.rope.freq_base", ("abc", STR)),
    ("llama.embedding_length", ("64", STR)),
])
def test_wrong_types_in_gguf_metadata_are_one_checkpoint_error(tmp_path, model, key, value):
    src = save(model, tmp_path / "m.gguf", format="gguf", dtype="float32")
    with pytest.raises(CheckpointError, match="bad.gguf"):
        load(rewrite_gguf(src, tmp_path / "bad.gguf", {key: value}))


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.safetensors"])
def test_an_hf_index_pointing_outside_the_folder_is_refused(tmp_path, model, name):
    path = save(model, tmp_path / "m", format="hf", shards=2)
    (tmp_path / "outside.safetensors").write_bytes((path / "model-00001-of-00002.safetensors").read_bytes())
    rewrite_json(path, "model.safetensors.index.json", {"weight_map": {"model.embed_tokens.weight": name}})
    with pytest.raises(CheckpointError, match="outside"):
        load(path)


def test_ffn_dim_multiplier_that_rounds_the_ffn_to_zero_is_refused():
    with pytest.raises(ConfigError, match="FFN hidden size is 0"):
        ModelArgs(dim=64, n_layers=2, n_heads=4, multiple_of=32, ffn_dim_multiplier=1e-9)


def test_the_index_check_keeps_ordinary_shards(tmp_path, model):
    path = save(model, tmp_path / "m", format="hf", shards=2)
    assert [f.name for f in hf._weight_files(path)] == ["model-00001-of-00002.safetensors",
                                                       "model-00002-of-00002.safetensors"]


@pytest.mark.parametrize("field", ["hidden_dim", "n_kv_heads", "dim"])
def test_a_boolean_where_a_size_goes_is_refused(field):
    """Found by the fuzz suite: GGUF metadata feed_forward_length of type BOOL built nn.Linear(32, True)."""
    with pytest.raises(ConfigError, match=field):
        ModelArgs(**{**dict(dim=64, n_layers=2, n_heads=4), field: True})


def test_a_corrupt_sentencepiece_model_is_a_tokenizer_error(tmp_path, sp_tokenizer):
    """Found by the fuzz suite: a 0x80 byte inside a piece made sentencepiece raise UnicodeDecodeError."""
    from llamalab.errors import TokenizerError
    from llamalab.tokenizer import load_tokenizer

    data = bytearray(sp_tokenizer.read_bytes())
    data[data.index(b"<0x00>") + 1] = 0x80  # the byte-fallback piece "<0x00>" is no longer UTF-8
    (tmp_path / "tokenizer.model").write_bytes(bytes(data))
    with pytest.raises(TokenizerError, match="not a readable SentencePiece model"):
        load_tokenizer(tmp_path / "tokenizer.model")


@pytest.mark.parametrize("count", [2**62, 2**64 - 1])
def test_a_gguf_array_count_past_any_offset_is_a_checkpoint_error(tmp_path, model, count):
    """Found by the fuzz suite: a corrupt array length sent the GGUF header reader's cursor past what
    struct can address (OverflowError)."""
    import struct

    path = save(model, tmp_path / "m.gguf", format="gguf", dtype="float32")
    data = bytearray(path.read_bytes())
    key_length = struct.unpack_from("<Q", data, 24)[0]  # the first key: general.architecture
    where = 32 + key_length  # its value type, then the value
    struct.pack_into("<IIQ", data, where, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32, count)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="m.gguf"):
        load(path)


@pytest.mark.parametrize("max_seq_len", [2**24, 2**31 - 1])
def test_a_huge_max_seq_len_sizes_no_rope_table_up_front(tmp_path, model, max_seq_len):
    """Issue 21: max_position_embeddings 2^31-1 allocated 8.6 GB of RoPE tables; they now cover what is used."""
    import torch

    path = save(model, tmp_path / "m", format="hf")
    rewrite_json(path, "config.json", {"max_position_embeddings": max_seq_len})
    loaded = load(path)
    assert loaded.args.max_seq_len == max_seq_len
    assert loaded.rope_cos.numel() * loaded.rope_cos.element_size() < 2**20  # not max_seq_len x head_dim/2 floats
    tokens = torch.randint(0, loaded.args.vocab_size, (1, 8))
    assert torch.equal(loaded(tokens), model(tokens))
