"""`llamalab serve MODEL`: an OpenAI-compatible HTTP server with continuous batching."""
from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from llamalab.cli.common import add_model_arguments, load_model, require_tokenizer
from llamalab.cli.parallel import add_tp_argument
from llamalab.errors import ConfigError

DEFAULT_MAX_SEQ_LEN = 4096  # context per request unless --max-seq-len says otherwise (a 128k cache per slot is huge)


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve a model over the OpenAI API with continuous batching")
    add_model_arguments(p)
    add_tp_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 (use it when binding beyond loopback)")
    p.add_argument("--slots", type=int, default=32, help="requests decoded together (rows of the KV cache)")
    p.add_argument("--max-seq-len", type=int,
                   help=f"context of a request, prompt included (default: the model's, at most {DEFAULT_MAX_SEQ_LEN})")
    p.add_argument("--max-waiting", type=int, default=256, help="requests allowed to wait for a slot; more get 429")
    p.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body accepted (413 beyond)")
    p.add_argument("--served-model-name", help="the model id clients see (default: MODEL's name, or the preset)")
    return p


def run(args) -> int:
    import uvicorn

    from llamalab.parallel import is_main_process
    from llamalab.serve import LockstepCalls, Scheduler, create_app, follow

    if args.compile:
        raise ConfigError("serve runs the eager model (batch sizes change every step); drop --compile")
    model, tokenizer = load_model(args)
    tokenizer = require_tokenizer(tokenizer, "serve")
    max_seq_len = args.max_seq_len or min(model.args.max_seq_len, DEFAULT_MAX_SEQ_LEN)
    if not is_main_process():  # with --tp, rank 0 serves and the other ranks repeat its model calls
        follow(model, args.slots, max_seq_len)
        return 0
    name = args.served_model_name or (Path(args.model).name if args.model else args.preset)
    scheduler = Scheduler(model, slots=args.slots, max_waiting=args.max_waiting, max_seq_len=max_seq_len,
                          vocab_size=min(tokenizer.vocab_size, model.args.vocab_size),
                          calls=LockstepCalls(model) if args.tp > 1 else None)
    if not _is_loopback(args.host) and not args.api_key:
        print(f"llamalab serve: warning: {args.host} is reachable from other machines and no --api-key is set",
              file=sys.stderr)
    cache_mib = sum(layer.attention.cache.k.nbytes * 2 for layer in model.layers) / 2**20
    print(f"llamalab serve: {name} on http://{args.host}:{args.port}/v1, {args.slots} slots of "
          f"{scheduler.max_seq_len} tokens (KV cache {cache_mib:.0f} MiB)", file=sys.stderr)
    app = create_app(scheduler, tokenizer, name, api_key=args.api_key, max_body_bytes=int(args.max_body_mb * 2**20))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
