"""`llamalab ablate`: train LLaMA and variants that undo its changes, at equal parameters and tokens; compare them."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from llamalab.config import ModelArgs


def add_parser(subparsers):
    p = subparsers.add_parser(
        "ablate", help="measure what each LLaMA change buys: train variants at equal parameters and tokens",
        description="Trains every variant with the same trainer, data, token budget and parameter count (the "
                    "feed-forward width absorbs the difference), then prints validation loss, training and "
                    "decoding speed and KV-cache bytes per token, and plots the loss curves.",
    )
    p.add_argument("--budget-tokens", type=int, default=500_000, metavar="N",
                   help="training tokens per variant (default: 500,000)")
    p.add_argument("--variants", nargs="+", metavar="SPEC",
                   help="names (llama, gpt2, vaswani) or LLaMA with changes as key=value[,key=value] (keys: "
                        "positions, norm, norm_position, ffn, attention; a wrong value is answered with the allowed "
                        "ones); default: llama, each change undone alone, gpt2, vaswani")
    p.add_argument("--data", metavar="DIR", help="a folder written by `llamalab data prepare` "
                                                 "(default: the embedded story corpus, prepared in OUT/data)")
    p.add_argument("--out", type=Path, default=Path("runs/ablate"), metavar="DIR",
                   help="one folder of metrics per variant, ablation.json and ablation.png (default: runs/ablate)")
    p.add_argument("--dim", type=int, default=128, metavar="N", help="width of every variant (default: 128)")
    p.add_argument("--n-layers", type=int, default=4, metavar="N", help="blocks (default: 4)")
    p.add_argument("--n-heads", type=int, default=8, metavar="N",
                   help="query heads; gqa keeps one KV head per 4 (default: 8)")
    p.add_argument("--seq-len", type=int, default=128, metavar="N", help="tokens per training sequence (default: 128)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="sequences per step (default: 16)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of every run (default: 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order (default: 0)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when there is one)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    import torch

    from llamalab.baselines.ablation import DEFAULT_VARIANTS, ablate, ablation_config, story_data
    from llamalab.baselines.variants import parse_variant
    from llamalab.inference import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variants = {spec: parse_variant(spec) for spec in args.variants or DEFAULT_VARIANTS}
    base = ModelArgs(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, multiple_of=32,
                     max_seq_len=args.seq_len)
    # with --json, stdout carries the JSON alone: the trainer's messages go to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        data = args.data or story_data(args.out / "data")  # one corpus whatever --seed
        cfg = ablation_config(data, args.out, args.budget_tokens, args.seq_len, args.batch_size, args.lr, args.seed,
                              progress=not args.no_progress)
        report = ablate(variants, base, cfg, device, args.budget_tokens)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report["results"])
        print(f"\nloss curves: {report['plot']}; all numbers: {args.out / 'ablation.json'}")
    return 0


def print_table(results: list[dict]) -> None:
    """One row per variant; parameters relative to the first row's."""
    reference = results[0]["parameters"]
    print(f"\n{'variant':<26} {'params':>10} {'vs ' + results[0]['name']:>9} {'ffn':>5} {'kv':>3} {'val loss':>9} "
          f"{'train tok/s':>12} {'KV B/token':>11} {'decode tok/s':>13}")
    for r in results:
        print(f"{r['name']:<26} {r['parameters']:>10,} {100 * (r['parameters'] / reference - 1):>+8.2f}% "
              f"{r['hidden_dim']:>5} {r['kv_heads']:>3} {r['val_loss']:>9.3f} {r['tokens_per_s']:>12,.0f} "
              f"{r['kv_cache_bytes_per_token']:>11,} {r['decode_tokens_per_s']:>13,.0f}")
