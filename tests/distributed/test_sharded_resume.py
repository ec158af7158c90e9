"""Sharded training checkpoints (torch.distributed.checkpoint) resume at another process count and layout, and a
run over two torchrun "nodes" trains like one process.

The single-process reference and the FSDP2 4-rank run write their checkpoints asynchronously (in the background,
a gloo group of their own under torchrun). Every run sees the same global batch of 8 sequences a step for 8 AdamW
steps; a checkpoint written after step 4 by one layout is resumed by another. Tolerance: train and validation
losses within 1e-5 relative of the uninterrupted one-process run (the layouts differ only in the order of float32
sums); at the same layout the resumed losses equal the uninterrupted ones bit for bit.
"""
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from distributed_launch import run_ranks

from llamalab.data import prepare, train_tokenizer, write_stories
from llamalab.train.config import TrainConfig
from llamalab.train.metrics import read_metrics
from llamalab.train.sharded import read_sharded_weights, sharded_steps

TINY = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16, tie_embeddings=True)
VAL_SEQUENCES = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stories")
    stories = write_stories(root / "stories.jsonl", 200, seed=2)
    prepare([stories], train_tokenizer([stories], 320, root / "tokenizer.model"), root / "data", val_fraction=0.1,
            workers=1, progress=False)
    return root / "data"


def config(data, out, batch_size, **overrides) -> TrainConfig:
    return TrainConfig(data=str(data), out_dir=str(out), model=dict(TINY), seq_len=32, batch_size=batch_size,
                       max_steps=8, warmup_steps=2, lr=1e-2, min_lr=1e-3, log_every=1, eval_every=0,
                       eval_batches=VAL_SEQUENCES // batch_size, save_every=4, keep_last=3, sample_tokens=4,
                       progress=False, dtype="float32", sharded_checkpoints=True, **overrides)


def train_here(cfg: TrainConfig) -> None:
    from llamalab.train.run import train

    train(cfg)


def losses(out, key="loss"):
    return [r[key] for r in read_metrics(out / "metrics.jsonl") if key in r]


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """The uninterrupted reference: 8 sequences a step in this process (its checkpoints written in the background)."""
    out = tmp_path_factory.mktemp("single")
    torch.manual_seed(1337)
    train_here(config(data, out, batch_size=8, async_checkpoints=True))
    return out


def resume_from_step_4(first: "os.PathLike", out) -> None:
    """A fresh run folder holding only the step-4 checkpoint of `first`."""
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(first / "checkpoints" / "step_0000004", out / "checkpoints" / "step_0000004")


def test_same_layout_resumes_bit_for_bit(data, one_process, tmp_path):
    assert sharded_steps(one_process / "checkpoints") == [4, 8]
    resume_from_step_4(one_process, tmp_path / "again")
    torch.manual_seed(1337)
    train_here(config(data, tmp_path / "again", batch_size=8, resume=True))
    assert losses(tmp_path / "again") == losses(one_process)[4:]
    assert losses(tmp_path / "again", "val_loss") == losses(one_process, "val_loss")


@pytest.mark.parametrize("first, then", [
    ((4, dict(parallel="fsdp", async_checkpoints=True), 2), (2, dict(parallel="fsdp"), 4)),
    ((4, dict(tp=2, dp_shard=2), 4), (4, dict(parallel="ddp"), 2)),
], ids=["fsdp4-to-fsdp2", "tp2xdp2-to-dp4"])
def test_another_layout_resumes_with_the_same_losses(data, one_process, tmp_path, first, then):
    (n1, flags1, batch1), (n2, flags2, batch2) = first, then
    run_ranks(train_here, n1, config(data, tmp_path / "first", batch1, **flags1), timeout=300)
    assert losses(tmp_path / "first") == pytest.approx(losses(one_process), rel=1e-5)
    resume_from_step_4(tmp_path / "first", tmp_path / "then")
    run_ranks(train_here, n2, config(data, tmp_path / "then", batch2, resume=True, **flags2), timeout=300)
    got, want = losses(tmp_path / "then"), losses(one_process)[4:]
    print(f"{first} -> {then}: max relative loss difference "
          f"{max(abs(g - w) / w for g, w in zip(got, want)):.1e}")
    assert got == pytest.approx(want, rel=1e-5)
    assert losses(tmp_path / "then", "val_loss") == pytest.approx(losses(one_process, "val_loss"), rel=1e-5)


def test_a_sharded_checkpoint_reads_as_full_weights(one_process):
    args, weights = read_sharded_weights(one_process / "checkpoints" / "step_0000008")
    from llamalab import checkpoint

    saved = checkpoint.load(one_process / "model")  # what the run saved at its end: the same step's weights
    assert args.dim == 32 and set(weights) == set(saved.state_dict()) - {"output.weight"}
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, saved.state_dict()[name], rtol=0, atol=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_train_like_one_process(data, one_process, tmp_path):
    """Two `torchrun --nnodes 2 --nproc-per-node 2` launches on this machine (c10d rendezvous, gloo): 4 ranks."""
    port = _free_port()
    cfg = config(data, tmp_path, batch_size=2, parallel="fsdp")
    flags = ["--data", str(data), "--out-dir", str(tmp_path), "--dim", "32", "--n-layers", "2", "--n-heads", "4",
             "--n-kv-heads", "2", "--multiple-of", "16", "--tie-embeddings", "--seq-len", "32", "--max-steps", "8",
             "--warmup-steps", "2", "--lr", "0.01", "--min-lr", "0.001", "--log-every", "1", "--eval-every", "0",
             "--eval-batches", str(cfg.eval_batches), "--save-every", "0", "--sample-tokens", "4", "--no-progress",
             "--dtype", "float32", "--batch-size", "2", "--parallel", "fsdp"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "llamalab-test",
               "-m", "llamalab.cli", "train", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert any("x 4 processes (fsdp)" in out for out, _ in outputs)
    assert losses(tmp_path) == pytest.approx(losses(one_process), rel=1e-5)
    assert losses(tmp_path, "val_loss") == pytest.approx(losses(one_process, "val_loss"), rel=1e-5)


def test_convert_writes_a_sharded_checkpoint_as_a_model(one_process, tmp_path, capsys):
    from llamalab import checkpoint
    from llamalab.cli.main import main

    assert main(["convert", str(one_process / "checkpoints" / "step_0000008"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert "(sharded training checkpoint) ->" in capsys.readouterr().out
    assert (tmp_path / "hf" / "tokenizer.model").is_file()  # the run's tokenizer went along
    tokens = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(checkpoint.load(tmp_path / "hf")(tokens),
                                   checkpoint.load(one_process / "model")(tokens), rtol=0, atol=1e-6)
