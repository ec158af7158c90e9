"""`llamalab serve MODEL`: an OpenAI-compatible HTTP server with continuous batching."""
from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from llamalab.cli import arguments
from llamalab.cli.common import add_model_arguments, load_model, require_tokenizer
from llamalab.cli.parallel import add_tp_argument
from llamalab.errors import ConfigError

API_KEY_ENV = "LLAMALAB_API_KEY"  # the API key from the environment, out of sight of `ps`
DEFAULT_MAX_SEQ_LEN = 4096  # llamalab.serve.server.DEFAULT_MAX_SEQ_LEN, named here so that the parser needs no torch


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve a model over the OpenAI API with continuous batching")
    add_model_arguments(p)
    add_tp_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=arguments.port, default=8000)
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 (use it when binding beyond loopback; "
                   f"visible to other users in `ps`: prefer --api-key-file or ${API_KEY_ENV})")
    p.add_argument("--api-key-file", help="read the API key from this file (its first line)")
    p.add_argument("--slots", type=arguments.positive_int, default=32,
                   help="requests decoded together (rows of the KV cache)")
    p.add_argument("--max-seq-len", type=arguments.positive_int,
                   help=f"context of a request, prompt included (default: the model's, at most {DEFAULT_MAX_SEQ_LEN})")
    p.add_argument("--kv-cache-memory", type=arguments.positive_float,
                   help="a paged KV cache of this many bytes (below 1: that fraction of the free device memory) "
                        "shared by the --slots rows as they need it, instead of every slot reserving --max-seq-len")
    p.add_argument("--prefill-chunk", type=arguments.positive_int,
                   help="prefill a longer prompt this many tokens per step, beside the decoding requests "
                        "(default: whole prompts, which stalls streaming clients while a long one is read)")
    p.add_argument("--max-waiting", type=arguments.non_negative_int, default=256,
                   help="requests allowed to wait for a slot; more get 429")
    p.add_argument("--max-body-mb", type=arguments.positive_float, default=4.0,
                   help="largest request body accepted (413 beyond)")
    p.add_argument("--served-model-name", help="the model id clients see (default: MODEL's name, or the preset)")
    return p


def run(args) -> int:
    from llamalab.serve.server import create_server

    if args.compile:
        raise ConfigError("serve runs the eager model (batch sizes change every step); drop --compile")
    api_key = read_api_key(args.api_key, args.api_key_file)
    loaded = load_model(args)
    require_tokenizer(loaded.tokenizer, "serve")
    name = args.served_model_name or (Path(args.model).name if args.model else args.preset)
    server = create_server(loaded, name, slots=args.slots, max_seq_len=args.max_seq_len, max_waiting=args.max_waiting,
                           api_key=api_key, max_body_bytes=int(args.max_body_mb * 2**20),
                           kv_cache_memory=args.kv_cache_memory, prefill_chunk=args.prefill_chunk)
    if server is None:  # with --tp, a rank other than 0: it repeated rank 0's model calls until the server stopped
        return 0
    if not _is_loopback(args.host) and not api_key:
        print(f"llamalab serve: warning: {args.host} is reachable from other machines and no --api-key is set",
              file=sys.stderr)
    print(f"llamalab serve: {name} on http://{args.host}:{args.port}/v1, {args.slots} slots of "
          f"{server.scheduler.max_seq_len} tokens (KV cache {server.cache_bytes / 2**20:.0f} MiB"
          f"{_paged_plan(server.scheduler)})", file=sys.stderr)
    server.run(args.host, args.port)
    return 0


def _paged_plan(scheduler) -> str:
    """How many tokens a paged cache holds and how many requests of a quarter context fit at once ('' if static)."""
    cache = scheduler.engine.cache
    if not hasattr(cache, "num_blocks"):
        return ""
    tokens = cache.num_blocks * cache.block_size
    typical = max(1, scheduler.max_seq_len // 4)
    return (f", paged: {cache.num_blocks} blocks of {cache.block_size} = {tokens:,} tokens, "
            f"{min(scheduler.slots, tokens // typical)} requests of {typical} tokens at once")


def read_api_key(flag: str | None, key_file: str | None) -> str | None:
    """The API key: --api-key, else the first line of --api-key-file, else $LLAMALAB_API_KEY, else none."""
    if flag is not None and key_file is not None:
        raise ConfigError("give the API key once: --api-key or --api-key-file")
    if key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8").splitlines()[0].strip() if Path(key_file).is_file() else ""
        except (OSError, UnicodeDecodeError, IndexError) as e:
            raise ConfigError(f"--api-key-file {key_file}: cannot read it ({e})") from None
        if not key:
            raise ConfigError(f"--api-key-file {key_file}: not a file, or its first line is empty; put the key there")
        return key
    key = flag if flag is not None else os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ConfigError("the API key is empty; give a non-empty key")
    return key


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
