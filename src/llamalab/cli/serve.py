"""`llamalab serve MODEL`: an OpenAI-compatible HTTP server with continuous batching."""
from __future__ import annotations

import argparse
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
    p.add_argument("--kv-cache", choices=("paged", "fixed"),
                   help="paged (default; fixed with --tp): blocks taken as requests grow, from a memory budget; "
                        "fixed: every slot preallocated to --max-seq-len positions (the engine before paging)")
    p.add_argument("--kv-cache-memory", type=arguments.positive_float,
                   help="bytes of the paged KV cache (below 1: that fraction of the free device memory; default: 90%% "
                        "of the GPU memory left after weights and workspace, or a quarter of the available RAM up "
                        "to 4 GiB on CPU, never more than --slots x --max-seq-len positions)")
    p.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction,
                   help="share the KV blocks of identical prompt prefixes (a system prompt) across requests "
                        "(default: on with the paged cache)")
    p.add_argument("--prefill-chunk", type=arguments.non_negative_int,
                   help="prompt tokens each step prefills beside the decoding requests, in the same forward pass, "
                        "or 2 per decoding request when that is more (default 512 on a GPU, 32 on CPU; 0: each "
                        "prompt whole when admitted, which stalls streaming clients while a long one is read)")
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
                           kv_cache=args.kv_cache, kv_cache_memory=args.kv_cache_memory,
                           prefill_chunk="auto" if args.prefill_chunk is None else args.prefill_chunk or None,
                           prefix_caching=args.prefix_caching)
    if server is None:  # with --tp, a rank other than 0: it repeated rank 0's model calls until the server stopped
        return 0
    if not _is_loopback(args.host) and not api_key:
        print(f"llamalab serve: warning: {args.host} is reachable from other machines and no --api-key is set",
              file=sys.stderr)
    print(f"llamalab serve: {name} on http://{args.host}:{args.port}/v1, {_plan(server)}", file=sys.stderr)
    server.run(args.host, args.port)
    return 0


def _plan(server) -> str:
    """The memory plan: the paged cache's (weights, cache, tokens, requests at once), or the fixed slots'."""
    scheduler = server.scheduler
    chunk = scheduler.engine.prefill_chunk
    chunking = f"prefill chunk {chunk}" if chunk else "whole-prompt prefill"
    if server.plan is None:
        return (f"{scheduler.slots} fixed slots of {scheduler.max_seq_len} tokens (KV cache "
                f"{server.cache_bytes / 2**30:.2f} GiB), {chunking}")
    prefix = "on" if scheduler.engine.cache.prefix_caching else "off"
    return f"{server.plan.describe()}, prefix caching {prefix}, {chunking}"


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
