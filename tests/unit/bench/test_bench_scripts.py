"""The GPU benchmarks of issue 10 run end to end on a CPU (the tiny debug shape) and report what the issue asks
for, with MFU and bandwidth figures that follow from the model's own parameter shapes."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from llamalab.config import ModelArgs
from llamalab.model import Transformer

BENCH = Path(__file__).resolve().parents[3] / "bench"
COMMON = ["--device", "cpu", "--preset", "debug", "--threads", "1", "--peak-tflops", "1", "--json"]
RUNS = {
    "gpu_decode": ["--new-tokens", "8", "--rounds", "1", "--batch-sizes", "2", "--prefill-len", "16"],
    "gpu_train": ["--batch-size", "2", "--seq-len", "64", "--steps", "2", "--warmup", "1"],
}
PEAK = 1e12


@pytest.fixture(scope="module")
def reports():
    """Each script's JSON report; the two run side by side."""
    runs = {name: subprocess.Popen([sys.executable, str(BENCH / f"{name}.py"), *COMMON, *extra],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, extra in RUNS.items()}
    out = {}
    for name, run in runs.items():
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
        out[name] = json.loads(stdout)
    return out


def matmul_weights(args: ModelArgs) -> tuple[int, int]:
    """(weights of the blocks' linear layers, weights of the output head) of a built model."""
    model = Transformer(args)
    blocks = sum(m.weight.numel() for m in model.layers.modules() if isinstance(m, nn.Linear))
    return blocks, model.output.weight.numel()


def test_decode_bench_measures_every_part_against_its_peers(reports):
    report = reports["gpu_decode"]
    rows = {(r["part"], r["variant"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {
        ("decode", "llamalab compiled", 1), ("decode", "llamalab compiled, no host sync", 1),
        ("decode", "llamalab eager", 1), ("decode", "hf eager", 1), ("decode", "hf static cache", 1),
        ("quant", "llamalab compiled bf16", 1), ("quant", "llamalab compiled int8", 1),
        ("quant", "llamalab compiled int4", 1), ("batch", "llamalab compiled", 2),
        ("prefill", "llamalab eager, 16 tokens", 1),
    }
    assert all(r["tokens_per_s"] > 0 for r in report["rows"])
    assert all(r["compile_s"] > 0 for (part, variant, _), r in rows.items() if "compiled" in variant)
    ratios = report["ratios"]["debug"]
    assert set(ratios) == {"compiled / bandwidth limit", "compiled / hf eager", "compiled / hf static cache",
                           "no host sync / compiled", "int8 / bf16", "int4 / bf16"}
    ours = rows["decode", "llamalab compiled", 1]["tokens_per_s"]
    assert ratios["compiled / hf eager"] == pytest.approx(ours / rows["decode", "hf eager", 1]["tokens_per_s"])


def test_decode_bench_limit_is_the_bytes_a_step_reads_over_the_measured_copy_bandwidth(reports):
    report = reports["gpu_decode"]
    args = ModelArgs.from_preset("debug")
    info = report["presets"]["debug"]
    assert info["context_len"] == info["prompt_len"] + info["new_tokens"] // 2
    weights = sum(p.numel() for p in Transformer(args).parameters()) * 2  # bf16
    kv_cache = 2 * args.n_layers * args.kv_heads * args.head_dim * 2 * info["context_len"]
    assert info["bytes_per_token"] == weights + kv_cache
    limit = report["copy_bandwidth_gb_s"] * 1e9 / info["bytes_per_token"]
    assert info["limit_tokens_per_s"] == pytest.approx(limit)
    compiled = next(r for r in report["rows"] if r["variant"] == "llamalab compiled" and r["batch"] == 1)
    assert compiled["mbu"] == pytest.approx(compiled["tokens_per_s"] / limit)
    assert report["ratios"]["debug"]["compiled / bandwidth limit"] == pytest.approx(compiled["mbu"])


def test_decode_bench_mfu_counts_the_matmuls_of_a_decode_step_and_of_the_prefill(reports):
    report = reports["gpu_decode"]
    args = ModelArgs.from_preset("debug")
    blocks, head = matmul_weights(args)
    context = report["presets"]["debug"]["context_len"]
    step = 2 * (blocks + head) + 4 * args.n_layers * args.dim * context  # one query against `context` keys
    batch = next(r for r in report["rows"] if r["part"] == "batch")
    assert batch["mfu"] == pytest.approx(batch["tokens_per_s"] * step / PEAK)
    n = 16
    prefill = 2 * n * blocks + 2 * head + 4 * args.n_layers * args.dim * n * n  # logits of the last position only
    row = next(r for r in report["rows"] if r["part"] == "prefill")
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] / n * prefill / PEAK)


def test_train_bench_times_our_step_and_the_hf_step_with_mfu(reports):
    report = reports["gpu_train"]
    assert [r["variant"] for r in report["rows"]] == ["llamalab", "hf"]
    ours, hf = report["rows"]
    tokens = report["batch_size"] * report["seq_len"]
    for row in report["rows"]:
        assert row["tokens_per_s"] == pytest.approx(tokens / (row["step_ms"] / 1000))
        assert row["activation_checkpointing"] is False and row["peak_memory_gb"] is None  # a CPU: no memory limit
    assert report["ratio"] == pytest.approx(ours["tokens_per_s"] / hf["tokens_per_s"])
    args = ModelArgs.from_preset("debug", vocab_size=320)  # the bench's corpus has 320 token ids
    blocks, head = matmul_weights(args)
    per_token = 6 * (blocks + head) + 12 * args.n_layers * args.dim * report["seq_len"]
    assert ours["mfu"] == pytest.approx(ours["tokens_per_s"] * per_token / PEAK)


SERVE_SMOKE = ["--preset", "stories260K", "--max-seq-len", "256", "--slots", "4", "--threads", "1", "--clients", "1",
               "3", "--requests-per-client", "1", "--min-requests", "2", "--max-tokens", "6", "--prompt-tokens", "4",
               "12", "--system-prompt", "64", "--system-clients", "1", "2", "--system-max-tokens", "3",
               "--streaming-clients", "2", "--stream-tokens", "12", "--idle-seconds", "0.3", "--long-prompt", "200",
               "--long-tokens", "10", "--prefill-chunk", "32", "--kv-cache-memory", "4000000", "--json"]


def test_serve_bench_runs_every_scenario_on_both_engines_and_checks_the_targets():
    run = subprocess.run([sys.executable, str(BENCH / "serve.py"), *SERVE_SMOKE], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    fixed, paged = report["results"]["fixed-slot"], report["results"]["paged"]
    assert "--kv-cache fixed --prefill-chunk 0" in fixed["command"] and "fixed slots" in fixed["startup"]
    assert "--kv-cache paged" in paged["command"] and "--prefill-chunk 32" in paged["command"]
    assert "paged" in paged["startup"] and "prefix caching on" in paged["startup"]
    for result in (fixed, paged):
        rows = result["throughput"]
        assert [r["clients"] for r in rows] == [1, 3] and [r["requests"] for r in rows] == [2, 3]
        for row in rows:
            assert row["tokens"] == row["requests"] * 6
            assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])
            assert 0 < row["ttft_p50_ms"] <= row["ttft_p99_ms"] and 0 < row["itl_p50_ms"] <= row["itl_p99_ms"]
        assert result["system-prompt"]["system_prompt_tokens"] == 64
        assert [(r["clients"], r["with"]["tokens"]) for r in result["system-prompt"]["rows"]] == [(1, 6), (2, 6)]
        long = result["long-prompt"]
        assert long["long_prompt_tokens"] == 200 and long["idle_itls"] > 0 and long["loaded_itls"] > 0
        assert len(long["long_arrivals_s"]) == 10
        assert long["long_arrivals_s"][0] * 1e3 == pytest.approx(long["long_ttft_ms"])
        assert max(g for g, _ in long["worst_gaps_ms_at_s"]) == pytest.approx(long["loaded"]["itl_max_ms"])
        behind = long["behind_long"]  # requests sent while it was read, and their TTFT
        assert behind["requests"] == 0 or 0 < behind["ttft_p50_ms"] <= behind["ttft_p99_ms"]
    # the 64-token system prompt's 4 full blocks come from the paged engine's prefix cache after its first request
    assert paged["health"]["prefix_cache_hit_rate"] > 0 and "prefix_cache_hit_rate" not in fixed["health"]
    targets = report["targets"]
    ttft = targets["system-prompt TTFT at 2 clients, peer / paged (p50)"]
    assert ttft["value"] == pytest.approx(fixed["system-prompt"]["rows"][1]["with"]["ttft_p50_ms"] /
                                          paged["system-prompt"]["rows"][1]["with"]["ttft_p50_ms"])
    itl = targets["long-prompt p99 ITL, loaded / idle (paged)"]
    assert itl["value"] == pytest.approx(paged["long-prompt"]["loaded"]["itl_p99_ms"] /
                                         paged["long-prompt"]["idle"]["itl_p99_ms"])
    assert itl["met"] == (itl["value"] <= 2)
    rate = targets["throughput at 3 clients, paged / peer (median of the rounds)"]
    rounds = [result["throughput"][1]["rounds_tokens_per_s"] for result in (paged, fixed)]
    assert rate["value"] == pytest.approx(statistics.median(a / b for a, b in zip(*rounds)))
    assert rate["met"] == (rate["value"] >= 1)
    rates = [result["throughput"][1]["tokens_per_s"] for result in (paged, fixed)]
    assert rate["best_rounds"] == pytest.approx(rates[0] / rates[1])


def test_gpu_all_runs_every_stage_and_a_stage_out_of_time_loses_only_itself(tmp_path):
    """bench/gpu_all.py --smoke: every stage of the one-call GPU check on a CPU (debug shape), its reports in
    results.json and the issue's table in summary.txt; then a stage cut at 1 s is recorded as timed out."""
    script = str(BENCH / "gpu_all.py")
    subprocess.run([sys.executable, script, str(tmp_path / "all"), "--smoke"], check=True, capture_output=True,
                   timeout=600)
    results = json.loads((tmp_path / "all" / "results.json").read_text())["stages"]
    assert list(results) == ["regions", "tests", "compile-cold", "compile-warm", "decode-7b", "prefill-7b", "quant-7b",
                             "decode-110m", "train-1b"]
    assert all(stage["status"] == "ok" for stage in results.values()), results
    assert all(stage["report"] for name, stage in results.items() if name not in ("regions", "tests"))
    assert results["compile-cold"]["report"]["compile_s"] > 0
    summary = (tmp_path / "all" / "summary.txt").read_text()
    assert summary.count("\n| ") == 11 and "7B prefill, MFU" in summary and "GPU tests" in summary

    subprocess.run([sys.executable, script, str(tmp_path / "cut"), "--smoke", "--only", "compile-cold",
                    "--stage-limit", "1"], check=True, capture_output=True, timeout=300)
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())["stages"]
    assert cut["compile-cold"]["status"] == "timed out at 1 s" and cut["compile-cold"]["report"] is None
    assert "compile-cold timed out at 1 s" in (tmp_path / "cut" / "summary.txt").read_text()
