"""`llamalab analyze`: published sizes in the JSON, a readable table, a plot, one-line user errors."""
import json

import pytest

from llamalab.checkpoint import save
from llamalab.cli.main import main
from llamalab.config import ModelArgs
from llamalab.model import Transformer


def analyze_json(capsys, *argv):
    assert main(["analyze", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_reports_published_sizes(capsys):
    reports = analyze_json(capsys, "--preset", "llama2-7b", "--preset", "llama3-8b", "--seq-len", "4096")
    llama2, llama3 = reports["llama2-7b"], reports["llama3-8b"]
    assert llama2["parameters"]["total"] == 6_738_415_616
    assert llama3["parameters"]["total"] == 8_030_261_248
    # the widely quoted KV-cache sizes: 512 KiB per token for Llama 2 7B, 128 KiB for Llama 3 8B (fp16/bf16)
    assert llama2["kv_cache"]["bytes_per_token"] == 512 * 1024
    assert llama3["kv_cache"]["bytes_per_token"] == 128 * 1024
    assert llama3["kv_cache"]["mha_bytes"] == 4 * llama3["kv_cache"]["bytes"] == 4 * 4096 * 128 * 1024
    assert llama2["weight_bytes"]["bf16"] == 2 * 6_738_415_616


def test_training_report_splits_state_over_ranks(capsys):
    one, eight = (analyze_json(capsys, "--preset", "llama2-7b", "--seq-len", "2048", "--train", "--dp", dp)
                  ["llama2-7b"]["training"] for dp in ("1", "8"))
    assert one["weights"] + one["gradients"] + one["master_weights"] + one["optimizer"] == 16 * 6_738_415_616
    assert eight["optimizer"] == pytest.approx(one["optimizer"] / 8)
    assert eight["activations"] == one["activations"]  # a micro-batch per rank: activations are not sharded


def test_table_is_readable_with_accelerator_limits(capsys):
    assert main(["analyze", "--preset", "llama3-8b", "--seq-len", "8192", "--batch", "4", "--accelerator",
                 "h100-sxm", "--tokens-per-second", "1000"]) == 0
    out = capsys.readouterr().out
    for text in ("8,030,261,248", "GQA saves 4x", "decode tokens/s <=", "MFU", "fits in memory"):
        assert text in out


def test_reads_the_shape_from_a_checkpoint(tmp_path, capsys):
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32, max_seq_len=64)
    model = Transformer(args)
    path = save(model, tmp_path / "ckpt")
    report = analyze_json(capsys, "--checkpoint", str(path))[str(path)]
    assert report["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["setting"]["seq_len"] == 64


def test_plot_compares_presets(tmp_path, capsys):
    out = tmp_path / "costs.png"
    assert main(["analyze", "--preset", "stories15M", "--preset", "stories42M", "--train", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["costs.png"]  # no temporary file left behind


@pytest.mark.parametrize("argv", [
    ["--preset", "stories15M", "--seq-len", "100000"],
    ["--preset", "stories15M", "--tokens-per-second", "10"],
    ["--preset", "stories15M", "--peak-tflops", "100"],
    ["--preset", "llama3-8b", "--tp", "3"],
    [],
])
def test_user_errors_are_one_line_and_exit_2(argv, capsys):
    assert main(["analyze", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
