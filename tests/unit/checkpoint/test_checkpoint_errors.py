"""Bad input gives our CheckpointError naming the file and the mismatch; nothing half-written; no code run."""
import json
import pathlib

import pytest
import torch
from checkpoint_models import CONFIGS, SUFFIX, random_model
from safetensors.torch import load_file, save_file

from llamalab.checkpoint import hf, load, save
from llamalab.errors import CheckpointError, OutputError

MAIN_FILE = {"meta": "consolidated.00.pth", "hf": "model.safetensors", "native": "model.safetensors"}


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIGS["gqa"])


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_truncated_file(tmp_path, model, fmt):
    path = save(model, tmp_path / f"m{SUFFIX[fmt]}", format=fmt)
    weights = path / MAIN_FILE[fmt] if path.is_dir() else path
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=weights.name):
        load(path)


@pytest.mark.parametrize("fmt, magic", [("gguf", b"GGUX"), ("llama2c", b"XXXX")])
def test_wrong_magic(tmp_path, model, fmt, magic):
    path = save(model, tmp_path / f"m{SUFFIX[fmt]}", format=fmt, **({"version": 1} if fmt == "llama2c" else {}))
    path.write_bytes(magic + path.read_bytes()[4:])
    with pytest.raises(CheckpointError, match=path.name):
        load(path)


@pytest.mark.parametrize("fmt, config_file, change, message", [
    ("meta", "params.json", {"multiple_of": 256},
     r"m: tensor layers.0.feed_forward.w1.weight has shape \(192, 64\) but .* needs \(256, 64\)"),
    ("hf", "config.json", {"num_key_value_heads": 4},
     r"m: tensor layers.0.attention.wk.weight has shape \(32, 64\) but .* needs \(64, 64\)"),
])
def test_config_that_disagrees_with_the_shapes(tmp_path, model, fmt, config_file, change, message):
    path = save(model, tmp_path / "m", format=fmt)
    config = json.loads((path / config_file).read_text())
    (path / config_file).write_text(json.dumps(dict(config, **change)))
    with pytest.raises(CheckpointError, match=message):
        load(path)


def test_missing_params_json(tmp_path, model):
    path = save(model, tmp_path / "m", format="meta")
    (path / "params.json").unlink()
    with pytest.raises(CheckpointError, match="params.json is missing"):
        load(path)


def test_unknown_tensor_names(tmp_path, model):
    path = save(model, tmp_path / "m", format="hf")
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unknown tensor name 'model.layers.0.self_attn.q_proj.bias'"):
        load(path)
    path = save(model, tmp_path / "meta", format="meta")
    shard = torch.load(path / "consolidated.00.pth", weights_only=True)
    torch.save(dict(shard, **{"layers.0.attention.bq": torch.zeros(64)}), path / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="unknown tensor name 'layers.0.attention.bq'"):
        load(path)


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_loading_never_runs_code_from_the_file(tmp_path, model):
    path = save(model, tmp_path / "m", format="meta")
    marker = tmp_path / "code-ran"
    torch.save({"tok_embeddings.weight": RunsCodeWhenUnpickled(marker)}, path / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="consolidated.00.pth"):
        load(path)
    assert not marker.exists()


def test_a_write_that_fails_midway_leaves_nothing_under_the_destination(tmp_path, model, monkeypatch):
    def fail_after_half(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", fail_after_half)
    with pytest.raises(OSError, match="disk full"):
        save(model, tmp_path / "out", format="hf")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_write_into_a_non_empty_folder(tmp_path, model):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists and is not empty"):
        save(model, tmp_path / "out", format="native")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
