import json
import os
import signal
import subprocess
import sys
import time

import torch

from llamalab import checkpoint
from llamalab.cli.main import build_parser, main
from llamalab.cli.train import config_from_args
from llamalab.train.metrics import read_metrics
from llamalab.train.run import stop_on_ctrl_c
from llamalab.train.snapshots import saved_steps
from llamalab.train.trainer import build_trainer

TOML = """
max_steps = 100
batch_size = 4
seq_len = 32
lr = 0.01
warmup_steps = 2
eval_every = 0
log_every = 1
progress = false

[model]
dim = 32
n_layers = 2
n_heads = 4
multiple_of = 16
tie_embeddings = true
"""
YAML = """
max_steps: 100
batch_size: 4
seq_len: 32
lr: 0.01
warmup_steps: 2
eval_every: 0
log_every: 1
progress: false
model: {dim: 32, n_layers: 2, n_heads: 4, multiple_of: 16, tie_embeddings: true}
"""


def test_stories_prepare_and_train_from_the_command_line(tmp_path, capsys):
    assert main(["data", "stories", "--out", str(tmp_path / "s.jsonl"), "--count", "200", "--seed", "4"]) == 0
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 200
    assert main(["data", "prepare", str(tmp_path / "s.jsonl"), "--vocab-size", "400", "--out", str(tmp_path / "d"),
                 "--val-fraction", "0.05", "--workers", "1", "--no-progress"]) == 0
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["vocab_size"] == 400
    (tmp_path / "run.toml").write_text(TOML)
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--data", str(tmp_path / "d"),
                 "--out-dir", str(tmp_path / "run"), "--max-steps", "6", "--n-layers", "1"]) == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # --max-steps beat the file's 100
    saved = json.loads((tmp_path / "run" / "model" / "llamalab.json").read_text())["model_args"]
    assert (saved["dim"], saved["n_layers"], saved["vocab_size"]) == (32, 1, 400)  # file, flag, data
    out = capsys.readouterr().out
    assert "model saved in" in out and "sample:" in out


def test_toml_and_yaml_files_give_the_same_settings(tmp_path):
    (tmp_path / "a.toml").write_text(TOML)
    (tmp_path / "a.yaml").write_text(YAML)
    parse = build_parser().parse_args
    from_toml = config_from_args(parse(["train", "--config", str(tmp_path / "a.toml")]))
    from_yaml = config_from_args(parse(["train", "--config", str(tmp_path / "a.yaml")]))
    assert from_toml == from_yaml
    assert from_toml.max_steps == 100 and from_toml.model["dim"] == 32 and not from_toml.progress
    flags = config_from_args(parse(["train", "--config", str(tmp_path / "a.yaml"), "--no-compile", "--dropout", "0.1",
                                    "--lora-targets", "wq", "wo", "--progress"]))
    assert flags.model["dropout"] == 0.1 and flags.lora_targets == ["wq", "wo"] and flags.progress


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("max_step = 3\n")
    cases = [
        (["train", "--config", str(tmp_path / "bad.toml")], "unknown training setting(s) ['max_step']"),
        (["train", "--data", str(tmp_path), "--preset", "debug"], "no prepared data"),
        (["train", "--data", str(tmp_path), "--preset", "debug", "--lr", "-1"], "min_lr <= lr"),
        (["train", "--preset", "debug", "--tp", "2", "--seq-len", "31"], "choose a seq_len that 2 divides, not 31"),
        (["train", "--preset", "debug", "--tp", "2", "--lora-rank", "4"], "LoRA adapters are not split"),
        (["data", "prepare", str(tmp_path / "none"), "--vocab-size", "300", "--out", str(tmp_path / "d")],
         "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"llamalab {argv[0]}: error:") and message in err, err


def llamalab(*argv, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "llamalab.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_run_killed_and_resumed_repeats_the_uninterrupted_losses_bit_for_bit(corpus, tmp_path):
    args = ["train", "--data", str(corpus[2]), "--dim", "32", "--n-layers", "2", "--n-heads", "4", "--multiple-of",
            "16", "--tie-embeddings", "--dropout", "0.1", "--seq-len", "32", "--batch-size", "4", "--max-steps", "30",
            "--warmup-steps", "5", "--lr", "0.01", "--log-every", "1", "--eval-every", "10", "--eval-batches", "2",
            "--save-every", "5", "--sample-tokens", "4", "--no-progress"]
    killed = llamalab(*args, "--out-dir", str(tmp_path / "killed"))
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_0000010.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and checkpoint.exists()
    assert not (tmp_path / "killed" / "model").exists()  # it really died mid-run
    resumed = llamalab(*args, "--out-dir", str(tmp_path / "killed"), "--resume")
    assert main([*args, "--out-dir", str(tmp_path / "whole")]) == 0  # meanwhile, the uninterrupted run (1 thread)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()

    def curve(run):
        records = read_metrics(tmp_path / run / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]

    expected = curve("whole")
    assert [r["step"] for r in expected if "loss" in r] == list(range(1, 31))
    assert curve("killed") == expected  # train and validation losses, learning rates: identical floats


def test_the_demo_runs_the_whole_pipeline_and_says_how_to_use_the_model(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--stories", "300", "--steps", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    model = tmp_path / "demo" / "model"
    assert f"The model is saved in {model}/" in out and f"llamalab generate {model} --prompt" in out
    assert "A story the model wrote" in out and "Final validation loss" in out
    assert [r["step"] for r in read_metrics(tmp_path / "demo" / "metrics.jsonl") if "val_loss" in r] == [0, 3]
    assert checkpoint.load(model).args.dim == 128


def test_ctrl_c_saves_a_checkpoint_and_stops_after_the_step(tiny_config, tmp_path):
    torch.manual_seed(0)
    trainer = build_trainer(tiny_config(max_steps=50), torch.device("cpu"))
    train_step = trainer.train_step

    def step_then_ctrl_c():
        loss = train_step()
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as the terminal sends on Ctrl-C
        return loss

    trainer.train_step = step_then_ctrl_c
    with stop_on_ctrl_c(trainer, announce=False):
        summary = trainer.fit()
    assert summary["interrupted"] and summary["step"] == 3
    assert saved_steps(tmp_path / "run" / "checkpoints") == [3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is gone again
