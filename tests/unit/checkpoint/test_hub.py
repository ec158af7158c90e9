"""Hugging Face model ids resolve offline from a local hub cache (HF_HUB_CACHE / HF_HOME) laid out as the hub does."""
import hashlib
import json
import shutil

import pytest
import torch
from checkpoint_models import CONFIGS, greedy, random_model

from llamalab.checkpoint import load, save
from llamalab.cli.main import main
from llamalab.errors import CheckpointError
from llamalab.tokenizer import load_tokenizer

REPO = "tiny-org/tiny-llama"
PROMPT = torch.tensor([[5, 17, 42, 99, 3]])


def cache_model(cache, repo_id, files):
    """Put a model's files into a hub cache as huggingface_hub does: blobs by hash, a snapshot of symlinks to them,
    refs/main naming the snapshot's commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for source in files:
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        (snapshot / source.name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / source.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIGS["gqa"])


@pytest.fixture
def hf_folder(tmp_path, model, sp_tokenizer):
    return save(model, tmp_path / "download", format="hf", tokenizer=sp_tokenizer)


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_model_id_loads_the_cached_snapshot(tmp_path, monkeypatch, model, hf_folder, variable):
    home = tmp_path / "hf-home"
    cache_model(home / "hub" if variable == "HF_HOME" else home, REPO, sorted(hf_folder.iterdir()))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(home))
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    loaded = load(REPO)
    with torch.no_grad():
        assert torch.equal(loaded(PROMPT), model(PROMPT))


def test_every_model_command_takes_the_id(tmp_path, monkeypatch, model, hf_folder, capsys):
    cache_model(tmp_path / "cache", REPO, sorted(hf_folder.iterdir()))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    argv = ["generate", REPO, "--prompt-ids", "5,17,42,99,3", "--max-new-tokens", "5", "--temperature", "0",
            "--json", "--dtype", "float32", "--device", "cpu"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == greedy(model, PROMPT)
    argv = ["generate", str(tmp_path / "native-no-tokenizer"), "--tokenizer", REPO, "--prompt", "the cat",
            "--max-new-tokens", "2", "--json"]
    save(model, tmp_path / "native-no-tokenizer", format="native")
    assert main(argv) == 0  # --tokenizer takes the id too: the snapshot's tokenizer.model
    assert json.loads(capsys.readouterr().out)["prompt_tokens"][1:] == load_tokenizer(hf_folder).encode("the cat",
                                                                                                         bos=False)
    assert main(["convert", REPO, str(tmp_path / "native"), "--to", "native"]) == 0
    capsys.readouterr()
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "native")(PROMPT), model(PROMPT))
    assert main(["analyze", "--checkpoint", REPO, "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out).values()  # the shape read from the cached config.json
    assert report["config"]["dim"] == model.args.dim and report["config"]["n_kv_heads"] == model.args.n_kv_heads
    (tmp_path / "text.txt").write_text("the cat sat on a mat while a dog ran far", encoding="utf-8")
    assert main(["eval", REPO, "--data", str(tmp_path / "text.txt"), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] > 5  # scored with the tokenizer.model of the snapshot


def test_a_gguf_repository_gives_its_one_gguf_file(tmp_path, monkeypatch, model):
    gguf = save(model, tmp_path / "model.Q8_0.gguf", format="gguf", dtype="q8_0")
    readme = tmp_path / "README.md"
    readme.write_text("a GGUF repository")
    cache_model(tmp_path / "cache", "org/tiny-GGUF", [gguf, readme])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path / "cache")
    reference = load(gguf)
    with torch.no_grad():
        assert torch.equal(load("org/tiny-GGUF")(PROMPT), reference(PROMPT))
        assert torch.equal(load("org/tiny-GGUF/model.Q8_0.gguf")(PROMPT), reference(PROMPT))


def test_a_repository_of_several_gguf_files_asks_which(tmp_path, monkeypatch, model):
    files = [save(model, tmp_path / f"model.{q}.gguf", format="gguf", dtype=d) for q, d in (("F32", None),
                                                                                           ("Q8_0", "q8_0"))]
    cache_model(tmp_path / "cache", "org/tiny-GGUF", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match=r"2 GGUF files .*org/tiny-GGUF/model\.F32\.gguf"):
        load("org/tiny-GGUF")


def test_a_missing_model_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "HuggingFaceTB/SmolLM2-135M-Instruct", "--prompt-ids", "1", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "hf download HuggingFaceTB/SmolLM2-135M-Instruct" in err and str(tmp_path / "empty-cache") in err
