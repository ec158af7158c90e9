"""`llamalab train` under torchrun (gloo on CPU) reaches the losses of one process that sees the same global batch
(8 sequences): DDP and FSDP2 on 2 processes (2 x 4, or 2 x 2 micro-batches x 2 accumulated), and FSDP2 x TP on 4
(`--tp 2 --dp-shard 2`: 2 data-parallel groups x 2 micro-batches x 2, the tp ranks of a group sharing them).

Tolerance: every train and validation loss within 1e-5 (relative) over 8 AdamW steps, the saved weights within
1e-4 relative + 1e-5 absolute and the saved models' logits within 1e-4 absolute (logits of size about 2); the
runs differ only in the order of float32 sums (gradients all-reduced or reduce-scattered, matmuls split by TP).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from llamalab import checkpoint
from llamalab.cli.main import main
from llamalab.data import prepare, train_tokenizer, write_stories
from llamalab.train.metrics import read_metrics

ARGS = ["--dim", "32", "--n-layers", "2", "--n-heads", "4", "--n-kv-heads", "2", "--multiple-of", "16",
        "--tie-embeddings", "--seq-len", "32", "--max-steps", "8", "--warmup-steps", "2", "--lr", "0.01",
        "--log-every", "1", "--eval-every", "4", "--sample-tokens", "4", "--no-progress",
        "--dtype", "float32"]  # the tolerances below are float32's (auto would pick bfloat16 on some CPUs)
VAL_SEQUENCES = 16  # validation windows of each evaluation: eval_batches x batch_size


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stories")
    stories = write_stories(root / "stories.jsonl", 200, seed=2)
    prepare([stories], train_tokenizer([stories], 320, root / "tokenizer.model"), root / "data", val_fraction=0.1,
            workers=1, progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """The reference run: 2 micro-batches of 4 sequences a step, in this process with one thread."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data", str(data), "--out-dir", str(out), *ARGS, "--batch-size", "4",
                     "--grad-accum", "2", "--eval-batches", str(VAL_SEQUENCES // 4)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("processes, flags, layout, batch, accum", [
    (2, ["--parallel", "ddp"], "ddp", 4, 1),
    (2, ["--parallel", "fsdp"], "fsdp", 2, 2),
    (4, ["--tp", "2", "--dp-shard", "2"], "fsdp 2 x tp 2", 2, 2),
], ids=["ddp", "fsdp", "fsdp2xtp2"])
def test_several_processes_reach_the_losses_of_one(data, one_process, tmp_path, processes, flags, layout, batch,
                                                   accum):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "llamalab.cli", "train", "--data", str(data), "--out-dir", str(tmp_path), *ARGS, *flags,
               "--batch-size", str(batch), "--grad-accum", str(accum), "--eval-batches", str(VAL_SEQUENCES // batch)]
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"8 x 32 tokens a step, 8 steps on cpu x {processes} processes ({layout})" in done.stdout
    expected, got = read_metrics(one_process / "metrics.jsonl"), read_metrics(tmp_path / "metrics.jsonl")
    for key in ("loss", "val_loss"):
        want = [r[key] for r in expected if key in r]
        assert len(want) == (8 if key == "loss" else 3)  # validation at steps 0, 4 and 8
        assert [r[key] for r in got if key in r] == pytest.approx(want, rel=1e-5)
    assert [r["lr"] for r in got if "lr" in r] == pytest.approx([r["lr"] for r in expected if "lr" in r])
    assert json.loads((tmp_path / "model" / "llamalab.json").read_text()) == \
        json.loads((one_process / "model" / "llamalab.json").read_text())
    model, reference = checkpoint.load(tmp_path / "model"), checkpoint.load(one_process / "model")
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)
    tokens = torch.randint(0, reference.args.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens), rtol=0, atol=1e-4)
