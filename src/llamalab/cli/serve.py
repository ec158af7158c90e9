"""`llamalab serve MODEL`: an OpenAI-compatible HTTP server with continuous batching."""
from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import torch
import uvicorn

from llamalab.checkpoint import find_tokenizer, load
from llamalab.config import PRESETS, ModelArgs
from llamalab.errors import ConfigError, TokenizerError
from llamalab.model import Transformer
from llamalab.serve import Scheduler, create_app
from llamalab.tokenizer import load_tokenizer


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve a model over the OpenAI API (completions, chat) with continuous batching")
    p.add_argument("model", nargs="?", help="checkpoint folder or file (any format `llamalab convert` reads)")
    p.add_argument("--preset", choices=list(PRESETS), metavar="NAME", help="with --random-init: serve a preset's shape")
    p.add_argument("--random-init", action="store_true", help="random weights (tests and benchmarks)")
    p.add_argument("--tokenizer", help="tokenizer file or folder (default: the one beside MODEL)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 (use it when binding beyond loopback)")
    p.add_argument("--slots", type=int, default=32, help="requests decoded together (KV-cache rows)")
    p.add_argument("--max-seq-len", type=int, help="context per request (default: the model's, at most 4096)")
    p.add_argument("--max-waiting", type=int, default=256, help="requests allowed to wait for a slot; more get 429")
    p.add_argument("--served-model-name", help="the model id clients see (default: MODEL's name or the preset)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = _load_model(args)
    name = args.served_model_name or (Path(args.model).name if args.model else args.preset)
    max_seq_len = args.max_seq_len or min(model.args.max_seq_len, 4096)
    scheduler = Scheduler(model, slots=args.slots, max_seq_len=max_seq_len, max_waiting=args.max_waiting,
                          vocab_size=min(tokenizer.vocab_size, model.args.vocab_size))
    if not _is_loopback(args.host) and not args.api_key:
        print(f"llamalab serve: warning: {args.host} is reachable from other machines and no --api-key is set",
              file=sys.stderr)
    kv_bytes = sum(c.k.nbytes + c.v.nbytes for c in (layer.attention.cache for layer in model.layers))
    print(f"serving {name} on http://{args.host}:{args.port}/v1: {args.slots} slots x {max_seq_len} tokens "
          f"(KV cache {kv_bytes / 2**20:.0f} MiB)", file=sys.stderr)
    app = create_app(scheduler, tokenizer, name, api_key=args.api_key)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _load_model(args) -> tuple[Transformer, object]:
    dtype = getattr(torch, args.dtype)
    if args.random_init:
        if args.model or not args.preset:
            raise ConfigError("--random-init goes with --preset NAME instead of MODEL")
        with torch.device(args.device):
            model = Transformer(ModelArgs.from_preset(args.preset)).to(dtype)
    elif args.model:
        model = load(args.model, device=args.device, dtype=dtype)
    else:
        raise ConfigError("give MODEL (a checkpoint) or --preset NAME --random-init")
    tokenizer_path = args.tokenizer or (find_tokenizer(args.model) if args.model else None)
    if tokenizer_path is None:
        raise TokenizerError("no tokenizer found; pass --tokenizer PATH (a server answers in text)")
    return model.eval(), load_tokenizer(tokenizer_path)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
