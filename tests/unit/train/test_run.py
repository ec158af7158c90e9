"""`llamalab.train.run.train(cfg)`: what `llamalab train` does, as one library call."""
import json
import math
from pathlib import Path

import torch

from llamalab import load_model
from llamalab.cli.main import main
from llamalab.train.metrics import read_metrics
from llamalab.train.run import train


def test_one_call_trains_from_scratch_and_saves_a_model_that_loads_and_knows_the_corpus(tiny_config, tmp_path, capsys):
    cfg = tiny_config(preset="debug", model={}, max_steps=40, eval_every=20, sample_tokens=12)
    vocab = json.loads((Path(cfg.data) / "meta.json").read_text())["vocab_size"]
    summary = train(cfg)
    assert "model: " in capsys.readouterr().out  # the run's one-line description, as the command prints it
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 3 and abs(val[0] - math.log(vocab)) < 0.5  # untrained: about ln(vocabulary)
    assert val[-1] < val[0] - 1.0 and summary["val_loss"] == val[-1]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 40 and sum(losses[-5:]) < sum(losses[:5]) - 5  # training loss fell
    assert not summary["interrupted"] and summary["step"] == 40
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert isinstance(summary["sample"], str) and summary["sample"]

    loaded = load_model(summary["model"], device="cpu")  # the saved folder: weights, config, tokenizer
    assert loaded.model.args.dim == 64 and loaded.model.args.vocab_size == vocab  # the preset, the data's vocabulary
    assert loaded.tokenizer is not None and loaded.tokenizer.vocab_size == vocab
    ids = loaded.tokenizer.encode("Once upon a time")
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids]))
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(ids[1:]))
    assert loss < math.log(vocab) - 1.0  # it learned the corpus' most common opening


def test_the_command_adds_nothing_to_the_library_call(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=6, out_dir=str(tmp_path / "library"))
    train(cfg)
    flags = ["--data", cfg.data, "--out-dir", str(tmp_path / "cli"), "--seq-len", "32", "--batch-size", "4",
             "--max-steps", "6", "--warmup-steps", "2", "--lr", "0.01", "--min-lr", "0.001", "--eval-every", "0",
             "--eval-batches", "2", "--log-every", "1", "--save-every", "0", "--sample-tokens", "8", "--no-progress",
             "--dtype", "float32", "--dim", "32", "--n-layers", "2", "--n-heads", "4", "--n-kv-heads", "2",
             "--multiple-of", "16", "--tie-embeddings"]
    assert main(["train", *flags]) == 0
    library, command = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("library", "cli"))
    assert [r["loss"] for r in library if "loss" in r] == [r["loss"] for r in command if "loss" in r]
    assert [r.get("val_loss") for r in library] == [r.get("val_loss") for r in command]
