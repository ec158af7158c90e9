"""The summary of a bench/gpu_all.py run: issue 19's table, each figure against its target (MET / MISSED / -)."""
from __future__ import annotations

import re


def _rows(report: dict | None, part: str) -> dict[str, dict]:
    return {r["variant"]: r for r in (report or {}).get("rows", []) if r.get("part", part) == part}


def _check(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "-"
    return "MET" if (value >= target if higher else value <= target) else "MISSED"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _tests(stage) -> tuple[str, str]:
    pattern = r"(\d+) (passed|failed|errors?|collected|deselected)"
    counts = {word: int(n) for line in stage.tail for n, word in re.findall(pattern, line)}
    if not counts:
        return stage.status, "-"
    text = ", ".join(f"{n} {w}" for w, n in counts.items())
    if not counts.get("passed") and not counts.get("failed"):
        return text, "-"  # collected only (--smoke)
    return text, "MET" if counts.get("passed") and not counts.get("failed") and not counts.get("errors") else "MISSED"


def _status(stages: dict, name: str) -> str:
    return stages[name].status if name in stages else "not run"


def summary(stages: dict) -> str:
    """Issue 19's table from the stages' reports (objects with .report, .status, .tail, .seconds)."""
    lines = []

    def add(work: str, value: str, target: str, verdict: str) -> None:
        lines.append(f"| {work} | {value} | {target} | {verdict} |")

    decode = stages.get("decode-7b")
    rows = _rows(decode.report if decode else None, "decode")
    info = next(iter((decode.report or {}).get("presets", {}).values()), {}) if decode else {}
    ours = rows.get("llamalab compiled", {}).get("tokens_per_s")
    nosync = rows.get("llamalab compiled, no host sync", {}).get("tokens_per_s")
    limit = info.get("limit_tokens_per_s")
    share = ours / limit if ours and limit else None
    peers = ", ".join(f"{name} {r['tokens_per_s']:.1f}" for name, r in rows.items() if name.startswith("hf"))
    add("7B decode bf16, tok/s (share of the bandwidth limit)",
        f"{_num(ours)} ({_num(share and 100 * share, '{:.0f}%')} of {_num(limit, '{:.0f}')}); no host sync "
        f"{_num(nosync)}; {peers or 'HF -'}", ">= 85% of the limit", _check(share, 0.85))
    add("7B decode: host loop / no host sync", _num(ours and nosync and ours / nosync, "{:.3f}"), ">= 0.97",
        _check(ours and nosync and ours / nosync, 0.97))
    for name, target in (("compile-cold", 30.0), ("compile-warm", 10.0)):
        report = stages[name].report if name in stages else None
        seconds = report and report["compile_s"]
        detail = (f"{_num(seconds)} s compile ({_num(report and report['start_to_first_token_s'])} s from process "
                  f"start; inductor {report and report['inductor']})") if report else _status(stages, name)
        hf = rows.get("hf static cache", {}).get("compile_s")
        add(f"7B decode step compile, {name.split('-')[1]}" + (f" (HF static cache {hf:.0f} s)" if hf else ""),
            detail, f"<= {target:.0f} s", _check(seconds, target, higher=False))
    prefill = _rows(stages["prefill-7b"].report if "prefill-7b" in stages else None, "prefill")
    mfu = next(iter(prefill.values()), {}).get("mfu")
    add("7B prefill, MFU", _num(mfu and 100 * mfu, "{:.1f}%"), ">= 60%", _check(mfu, 0.60))
    quant = _rows(stages["quant-7b"].report if "quant-7b" in stages else None, "quant")
    bf16 = quant.get("llamalab compiled bf16", {}).get("tokens_per_s")
    for weights, target in (("int8", 1.6), ("int4", 2.2)):
        tps = quant.get(f"llamalab compiled {weights}", {}).get("tokens_per_s")
        ratio = tps / bf16 if tps and bf16 else None
        add(f"7B {weights} decode, tok/s (x our bf16)", f"{_num(tps)} ({_num(ratio, '{:.2f}x')})", f">= {target}x",
            _check(ratio, target))
    small = _rows(stages["decode-110m"].report if "decode-110m" in stages else None, "decode")
    tps = small.get("llamalab compiled", {}).get("tokens_per_s")
    add("stories110M decode, tok/s", _num(tps), ">= 2600", _check(tps, 2600))
    train = {r["variant"]: r for r in ((stages["train-1b"].report or {}).get("rows", []) if "train-1b" in stages
                                       else [])}
    ours_t, hf_t = train.get("llamalab", {}), train.get("hf", {})
    add("llama3.2-1b training b4x2048, MFU (tok/s; HF)",
        f"{_num(ours_t.get('mfu') and 100 * ours_t['mfu'], '{:.1f}%')} ({_num(ours_t.get('tokens_per_s'), '{:,.0f}')}"
        f"; HF {_num(hf_t.get('tokens_per_s'), '{:,.0f}')})", ">= 55%", _check(ours_t.get("mfu"), 0.55))
    add("llama3.2-1b training, first step s", _num(ours_t.get("compile_s")), "<= 20 s",
        _check(ours_t.get("compile_s"), 20, higher=False))
    if "tests" in stages:
        add("GPU tests (pytest -m gpu)", *_tests(stages["tests"])[:1], "all pass", _tests(stages["tests"])[1])
    status = "; ".join(f"{s.name} {s.status} ({s.seconds:.0f} s)" for s in stages.values())
    return "\n".join(["| work | measured | target | verdict |", "|---|---|---|---|", *lines, "", f"stages: {status}"])
