import json
import statistics
from pathlib import Path

from llamalab.baselines.ablation import story_data
from llamalab.cli.main import main
from llamalab.train.metrics import read_metrics


def test_ablate_runs_end_to_end_and_its_json_is_the_logged_metrics(tmp_path, capsys):
    data = story_data(tmp_path / "data", stories=300, vocab_size=320, seed=1)
    out = tmp_path / "ablate"
    status = main(["ablate", "--data", str(data), "--out", str(out), "--budget-tokens", "4096",
                   "--variants", "llama", "attention=mqa", "--dim", "32", "--n-layers", "1", "--n-heads", "4",
                   "--seq-len", "32", "--batch-size", "4", "--threads", "1", "--no-progress", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON alone
    assert report == json.loads((out / "ablation.json").read_text())
    assert Path(report["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    llama, mqa = report["results"]
    for row in (llama, mqa):
        records = read_metrics(Path(row["metrics"]))
        assert row["steps"] == 4096 // (4 * 32) == records[-1]["step"]
        assert row["tokens"] == 4096
        assert row["val_loss"] == [r["val_loss"] for r in records if "val_loss" in r][-1]
        assert row["train_loss"] == [r["loss"] for r in records if "loss" in r][-1]
        assert row["tokens_per_s"] == statistics.median(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
        assert row["val_loss"] < 5.0  # from ln(320) = 5.77
        assert row["decode_tokens_per_s"] > 0
    assert abs(mqa["parameters"] / llama["parameters"] - 1) < 0.02
    # fp32 keys and values of one layer: 2 x 4 heads x 8 dims x 4 bytes; MQA keeps one head of the four
    assert llama["kv_cache_bytes_per_token"] == 2 * 4 * 8 * 4 == 4 * mqa["kv_cache_bytes_per_token"]


def test_ablate_rejects_an_unknown_variant_in_one_line(capsys):
    assert main(["ablate", "--variants", "ffn=swish"]) == 2
    err = capsys.readouterr().err
    assert "ffn='swish' is not one of swiglu, gelu, relu" in err and err.count("\n") == 1
