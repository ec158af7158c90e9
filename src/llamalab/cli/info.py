"""`llamalab info`: a configuration and its parameter count."""
from __future__ import annotations

import json

from llamalab.analysis.params import count_parameters
from llamalab.config import PRESETS, ModelArgs


def add_parser(subparsers):
    p = subparsers.add_parser("info", help="show a preset's configuration and parameter count")
    p.add_argument("--preset", required=True, choices=list(PRESETS), metavar="NAME",
                   help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args) -> int:
    model_args = ModelArgs.from_preset(args.preset)
    n_params = count_parameters(model_args).total  # from the shapes alone: no torch import (seconds), no model
    info = {
        "preset": args.preset,
        "config": model_args.to_dict(),
        "head_dim": model_args.head_dim,
        "ffn_hidden_dim": model_args.ffn_hidden_dim,
        "parameters": n_params,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"preset {args.preset}")
    derived = {"head_dim": info["head_dim"], "ffn_hidden_dim": info["ffn_hidden_dim"]}
    for key, value in {**info["config"], **derived}.items():
        print(f"  {key:<20} {value}")
    print(f"  {'parameters':<20} {n_params:,} ({n_params / 1e9:.2f} B)")
    return 0
