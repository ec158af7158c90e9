"""`llamalab bench MODEL | --preset NAME --random-init`: prefill and decode speed, and how close decoding
comes to the machine's memory bandwidth (each decode step reads every weight and the KV cache once)."""
from __future__ import annotations

import json

from llamalab.cli import arguments
from llamalab.cli.common import add_model_arguments, decode_step, load_model
from llamalab.errors import ConfigError


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="measure prefill and decode tokens/s and memory bandwidth use")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=arguments.positive_int, default=1)
    p.add_argument("--prompt-len", type=arguments.positive_int, default=128, help="prompt tokens per row")
    p.add_argument("--new-tokens", type=arguments.positive_int, default=128, help="tokens decoded per row")
    p.add_argument("--repeats", type=arguments.positive_int, default=3, help="timed runs; the best is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args) -> int:
    if min(args.batch_size, args.prompt_len, args.new_tokens, args.repeats) < 1:
        raise ConfigError("--batch-size, --prompt-len, --new-tokens and --repeats must be positive")
    from llamalab.generate.benchmark import benchmark
    from llamalab.serve.server import check_cache_fits

    loaded = load_model(args)
    if args.prompt_len + args.new_tokens > loaded.model.args.max_seq_len:
        raise ConfigError(f"--prompt-len + --new-tokens = {args.prompt_len + args.new_tokens} exceeds the model's "
                          f"context of {loaded.model.args.max_seq_len} tokens")
    check_cache_fits(loaded.model, args.batch_size, args.prompt_len + args.new_tokens)
    step = decode_step(loaded, args.batch_size, args.prompt_len + args.new_tokens)
    report = benchmark(loaded.model, step, args.batch_size, args.prompt_len, args.new_tokens, args.repeats)
    report["model"] = args.model or args.preset
    if args.json:
        print(json.dumps(report))
        return 0
    quantized = f", {args.quantize}" if args.quantize else ""
    print(f"{report['model']} on {report['device']} ({report['dtype']}{quantized}), "
          f"batch {args.batch_size}, prompt {args.prompt_len}, {args.new_tokens} new tokens")
    print(f"  prefill    {report['prefill_tokens_per_s']:10.1f} tokens/s")
    print(f"  decode     {report['decode_tokens_per_s']:10.1f} tokens/s  ({report['decode_ms_per_step']:.2f} ms/step)")
    print(f"  bandwidth  {report['decode_bandwidth_gb_s']:10.2f} GB/s read by decoding "
          f"({report['bytes_per_step'] / 2**20:.1f} MiB/step) = {report['bandwidth_fraction']:.0%} of the "
          f"{report['copy_bandwidth_gb_s']:.2f} GB/s measured by a memory copy")
    return 0
