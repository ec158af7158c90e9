"""`llamalab generate MODEL --tp 2` on the 2 ranks of a torchrun-style group prints one result: the model's greedy
tokens."""
import contextlib
import io
import json

import pytest
import torch
from distributed_launch import run_ranks

from llamalab.checkpoint import save
from llamalab.cli.main import build_parser, main
from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.parallel.mesh import init_distributed, shared_seed

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=32)
PROMPT = [1, 17, 42, 99]


@torch.no_grad()
def greedy_tokens(model: Transformer, prompt: list[int], n_new: int) -> list[int]:
    """argmax of full-sequence logits, one token at a time (no KV cache: independent of the decode loop)."""
    tokens = list(prompt)
    for _ in range(n_new):
        tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt):]


@pytest.fixture(scope="module")
def two_shard_checkpoint(tmp_path_factory):
    build_parser()
    import llamalab.parallel.loading  # noqa: F401  (the commands and DTensor imported once here, not in each rank)
    torch.manual_seed(0)
    model = Transformer(ARGS).eval()
    return save(model, tmp_path_factory.mktemp("tp") / "meta", format="meta", shards=2), greedy_tokens(model, PROMPT, 6)


def cli_output(argv: list[str]) -> dict:
    """Exit code and standard output of `llamalab ARGV` (runs in each rank)."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(argv)
    return dict(code=code, stdout=out.getvalue())


def test_generate_with_tp_prints_once_the_greedy_tokens(two_shard_checkpoint):
    path, expected = two_shard_checkpoint
    argv = ["generate", str(path), "--tp", "2", "--device", "cpu", "--prompt-ids", ",".join(map(str, PROMPT)),
            "--max-new-tokens", "6", "--temperature", "0", "--json"]
    rank0, rank1 = run_ranks(cli_output, 2, argv)
    assert rank0["code"] == rank1["code"] == 0
    assert rank1["stdout"] == ""
    (line,) = rank0["stdout"].splitlines()
    assert json.loads(line)["tokens"] == expected


def test_tp_size_that_does_not_divide_the_heads_is_one_error_line(two_shard_checkpoint, capsys):
    path, _ = two_shard_checkpoint
    assert main(["generate", str(path), "--tp", "3", "--device", "cpu", "--prompt-ids", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["llamalab generate: error: tensor-parallel size 3 does not divide n_heads=4; "
                   "choose a --tp that divides it"]


def seed_of_this_rank() -> int:
    init_distributed("cpu")
    return shared_seed(None)


def test_without_seed_every_rank_samples_with_rank_0_s_seed():
    seeds = run_ranks(seed_of_this_rank, 2)
    assert seeds[0] == seeds[1] and isinstance(seeds[0], int)
