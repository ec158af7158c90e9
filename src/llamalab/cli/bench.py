"""`llamalab bench MODEL | --preset NAME --random-init`: prefill and decode speed, and how close decoding
comes to the machine's memory bandwidth (each decode step reads every weight and the KV cache once)."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from llamalab.cli.common import add_model_arguments, decode_step, load_model
from llamalab.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from llamalab.model import Transformer


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="measure prefill and decode tokens/s and memory bandwidth use")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per row")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per row")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args) -> int:
    if min(args.batch_size, args.prompt_len, args.new_tokens, args.repeats) < 1:
        raise ConfigError("--batch-size, --prompt-len, --new-tokens and --repeats must be positive")
    model, _ = load_model(args)
    step = decode_step(model, args, args.batch_size, args.prompt_len + args.new_tokens)
    report = benchmark(model, step, args.batch_size, args.prompt_len, args.new_tokens, args.repeats)
    report["model"] = args.model or args.preset
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']} on {report['device']} ({report['dtype']}{', ' + args.quantize if args.quantize else ''}), "
          f"batch {args.batch_size}, prompt {args.prompt_len}, {args.new_tokens} new tokens")
    print(f"  prefill    {report['prefill_tokens_per_s']:10.1f} tokens/s")
    print(f"  decode     {report['decode_tokens_per_s']:10.1f} tokens/s  ({report['decode_ms_per_step']:.2f} ms/step)")
    print(f"  bandwidth  {report['decode_bandwidth_gb_s']:10.2f} GB/s read by decoding "
          f"({report['bytes_per_step'] / 2**20:.1f} MiB/step) = {report['bandwidth_fraction']:.0%} of the "
          f"{report['copy_bandwidth_gb_s']:.2f} GB/s measured by a memory copy")
    return 0


def benchmark(model: Transformer, step, batch_size: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """Best-of-`repeats` prefill and decode throughput of random prompts, and the bandwidth decoding uses."""
    import torch

    from llamalab.generate.decode import Generation
    from llamalab.generate.sampling import SamplingParams

    if prompt_len + new_tokens > model.args.max_seq_len:
        raise ConfigError(f"--prompt-len + --new-tokens must fit the context of {model.args.max_seq_len}")
    device = model.tok_embeddings.weight.device
    prompts = torch.randint(0, model.args.vocab_size, (batch_size, prompt_len)).tolist()
    model.setup_cache(batch_size, prompt_len + new_tokens)
    greedy = SamplingParams(temperature=0)
    list(Generation(model, prompts, min(new_tokens, 4), greedy, step=step))  # warm-up (and compilation)
    prefill, decode = float("inf"), float("inf")
    for _ in range(repeats):
        generation = Generation(model, prompts, new_tokens, greedy, step=step)
        list(generation)
        prefill, decode = min(prefill, generation.timings["prefill_s"]), min(decode, generation.timings["decode_s"])
    steps = new_tokens - 1  # the first new token comes out of the prefill
    bytes_per_step = decode_bytes(model, batch_size, prompt_len + new_tokens // 2)
    copy = copy_bandwidth(device)
    step_s = decode / max(steps, 1)
    return {
        "device": str(device), "dtype": str(model.tok_embeddings.weight.dtype).removeprefix("torch."),
        "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "prefill_tokens_per_s": batch_size * prompt_len / prefill,
        "decode_tokens_per_s": batch_size / step_s, "decode_ms_per_step": step_s * 1000,
        "bytes_per_step": bytes_per_step, "decode_bandwidth_gb_s": bytes_per_step / step_s / 1e9,
        "copy_bandwidth_gb_s": copy / 1e9, "bandwidth_fraction": bytes_per_step / step_s / copy,
    }


def decode_bytes(model: Transformer, batch_size: int, context_len: int) -> int:
    """Bytes one decode step reads: the blocks', final norm's and head's weights, and the filled KV cache."""
    modules = [*model.layers, model.norm, model.output]
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}  # a tied head counts once
    caches = [layer.attention.cache for layer in model.layers]
    weights = sum(t.nbytes for t in tensors.values()) - sum(c.k.nbytes + c.v.nbytes for c in caches)
    a, element = model.args, caches[0].k.element_size()
    return weights + 2 * a.n_layers * a.kv_heads * a.head_dim * element * batch_size * context_len


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second of the best of `repeats` copies of a large buffer (each copy reads and writes it)."""
    import torch

    src = torch.ones(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy warms up (page faults)
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
