"""`llamalab analyze`: parameters, FLOPs, memory and speed limits of a model, as a table, JSON or a plot."""
from __future__ import annotations

import json

from llamalab.analysis import ACCELERATORS, PRECISIONS, WEIGHT_DTYPES, Accelerator, get_accelerator
from llamalab.analysis.report import Workload, cost_report
from llamalab.config import PRESETS, ModelArgs
from llamalab.errors import ConfigError
from llamalab.parallel.sizes import check_tp_size


def add_parser(subparsers):
    p = subparsers.add_parser("analyze", help="parameters, FLOPs, memory and MFU of a model (no weights needed)")
    p.add_argument("--preset", action="append", default=[], choices=list(PRESETS), metavar="NAME",
                   help=f"a named shape, repeatable to compare: {', '.join(PRESETS)}")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="read the shape from a checkpoint's config (any format llamalab reads), repeatable")
    p.add_argument("--seq-len", type=int, help="prompt / context / training length (default: the model's max_seq_len)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (per data-parallel rank when training)")
    p.add_argument("--dtype", default="bf16", choices=WEIGHT_DTYPES, help="inference weights (default bf16)")
    p.add_argument("--train", action="store_true", help="add the training memory (AdamW) of one rank")
    p.add_argument("--precision", default="mixed", choices=list(PRECISIONS),
                   help="training precision: mixed = bf16 + fp32 master weights and AdamW states (default)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in backward")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks")
    p.add_argument("--dp", type=int, default=1, help="fully sharded data-parallel ranks (FSDP / ZeRO-3)")
    p.add_argument("--accelerator", choices=list(ACCELERATORS), help="hardware for speed limits and MFU")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 TFLOP/s of an accelerator not in the table")
    p.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth (GB/s) of an accelerator not in the table")
    p.add_argument("--tokens-per-second", type=float, help="a measured throughput (all ranks): report MFU and MBU")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by model name")
    p.add_argument("--plot", metavar="OUT.png", help="draw memory and FLOPs per token against context length")
    return p


def run(args) -> int:
    models = _models(args)
    accelerator = _accelerator(args)
    work = Workload(args.batch, args.dtype, args.train, args.precision, args.activation_checkpointing, args.tp, args.dp)
    reports = {}
    for name, model_args in models.items():
        seq_len = args.seq_len or model_args.max_seq_len
        if not 1 <= seq_len <= model_args.max_seq_len:
            raise ConfigError(f"--seq-len {seq_len} must be in 1..{model_args.max_seq_len} (max_seq_len of {name})")
        if min(args.batch, args.tp, args.dp) < 1:
            raise ConfigError("--batch, --tp and --dp must be positive")
        check_tp_size(model_args, args.tp, training=args.train)
        reports[name] = cost_report(model_args, seq_len, work, accelerator, args.tokens_per_second)
    if args.plot:
        from llamalab.analysis.plot import write_scaling_plot  # matplotlib: only when a plot is asked for

        write_scaling_plot(args.plot, models, work)
    if args.json:
        print(json.dumps(reports))
    else:
        print("\n\n".join(format_report(name, report) for name, report in reports.items()))
        if args.plot:
            print(f"\nplot written to {args.plot}")
    return 0


def _models(args) -> dict[str, ModelArgs]:
    models = {name: ModelArgs.from_preset(name) for name in args.preset}
    if args.checkpoint:
        from llamalab import checkpoint  # torch: only when a checkpoint is read

        for path in args.checkpoint:
            models[path], _ = checkpoint.read(path)
    if not models:
        raise ConfigError("give a model: --preset NAME or --checkpoint PATH (both repeatable)")
    return models


def _accelerator(args) -> Accelerator | None:
    known = get_accelerator(args.accelerator) if args.accelerator else None
    if args.peak_tflops is None and args.bandwidth_gbs is None:
        if args.tokens_per_second is not None and known is None:
            raise ConfigError("--tokens-per-second needs the hardware: --accelerator NAME or --peak-tflops and "
                              "--bandwidth-gbs")
        return known
    if known is None and (args.peak_tflops is None or args.bandwidth_gbs is None):
        raise ConfigError("a custom accelerator needs both --peak-tflops and --bandwidth-gbs")
    return Accelerator(
        name=known.name if known else "custom",
        peak_flops=args.peak_tflops * 1e12 if args.peak_tflops is not None else known.peak_flops,
        memory_bandwidth=args.bandwidth_gbs * 1e9 if args.bandwidth_gbs is not None else known.memory_bandwidth,
        memory_bytes=known.memory_bytes if known else 0.0,
        device_names=(),
    )


# -- the readable table --------------------------------------------------------------------------------------------
def _si(value: float, unit: str) -> str:
    """1.23e12 -> '1.23 T<unit>', 4.5e-3 -> '4.50 m<unit>' (decimal prefixes, as datasheets use)."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1), ("m", 1e-3),
                          ("µ", 1e-6)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}"


def _flops_line(flops: dict) -> str:
    share = flops["attention"] / flops["total"]
    return f"{_si(flops['total'], 'FLOP')}  (matmul {_si(flops['matmul'], 'FLOP')}, attention {share:.1%})"


def format_report(name: str, r: dict) -> str:
    """The report as aligned 'label  value' lines under section headings."""
    s, p, kv = r["setting"], r["parameters"], r["kv_cache"]
    seq = s["seq_len"]
    rows: list[tuple[str, str] | str] = [f"{name}  (seq_len {seq}, batch {s['batch']}, {s['dtype']})", "parameters"]
    for part in ("embedding", "attention", "feed_forward", "norms", "output"):
        rows.append((part, f"{p[part]:,}" + ("  (tied to embedding)" if part == "output" and not p[part] else "")))
    rows += [("total", f"{p['total']:,}  ({p['total'] / 1e9:.2f} B)" if p["total"] >= 1e9
              else f"{p['total']:,}  ({p['total'] / 1e6:.1f} M)"), "FLOPs"]
    rows += [
        ("forward / token", _flops_line(r["flops_per_token"]["forward"])),
        ("training / token", _flops_line(r["flops_per_token"]["training"])),
        (f"prefill of {seq} tokens", _flops_line(r["prefill_flops"])),
        (f"decode step @ {seq}", _flops_line(r["decode_step_flops"])),
        "memory",
    ]
    rows += [(f"weights {dtype}", _si(size, "B")) for dtype, size in r["weight_bytes"].items()]
    saving = kv["mha_bytes"] / kv["bytes"]
    rows += [
        (f"KV cache / token ({kv['dtype']})", _si(kv["bytes_per_token"], "B")),
        (f"KV cache {s['batch']} x {seq}", _si(kv["bytes"], "B") +
         (f"  (MHA would need {_si(kv['mha_bytes'], 'B')}: GQA saves {saving:.0f}x)" if saving > 1 else "")),
        (f"inference / GPU (tp={s['tp']})", _si(r["inference_bytes_per_rank"], "B")),
    ]
    if "training" in r:
        t = r["training"]
        rows.append(f"training memory per GPU ({s['precision']}, tp={s['tp']}, dp={s['dp']}"
                    + (", activation checkpointing)" if s["checkpointing"] else ")"))
        for part in ("weights", "gradients", "master_weights", "optimizer", "activations"):
            rows.append((part.replace("_", " "), _si(t[part], "B")))
        rows += [("activations / layer", _si(t["activations_per_layer"], "B")), ("total", _si(t["total"], "B"))]
    if "accelerator" in r:
        a = r["accelerator"]
        rows += [
            f"limits on {a['name']} ({_si(a['peak_flops'], 'FLOP/s')}, {_si(a['memory_bandwidth'], 'B/s')})",
            ("prefill time >=", _si(a["prefill_seconds_min"], "s")),
            ("decode tokens/s <=", f"{a['decode_tokens_per_second_max']:,.0f}"),
            ("training tokens/s <=", f"{a['training_tokens_per_second_max']:,.0f}"),
        ]
        if a["memory_bytes"]:
            need, have = a["memory_needed"], a["memory_bytes"]
            fits = "yes" if need <= have else "NO"
            rows.append(("fits in memory", f"{fits} ({need / have:.0%} of {_si(have, 'B')})"))
    if "utilisation" in r:
        u = r["utilisation"]
        rows += [f"measured {u['tokens_per_second']:,.0f} tokens/s", ("MFU", f"{u['mfu']:.1%}")]
        if "mbu" in u:
            rows.append(("MBU (as decode)", f"{u['mbu']:.1%}"))
    width = max(len(row[0]) for row in rows if isinstance(row, tuple)) + 2
    return "\n".join(row if isinstance(row, str) else f"  {row[0]:<{width}}{row[1]}" for row in rows)
