"""Decoding speed and how close it comes to the machine's memory bandwidth (each decode step reads every weight
and the filled KV cache once): the measurements of `llamalab bench` and of the scripts in bench/."""
from __future__ import annotations

import time

import torch

from llamalab.errors import ConfigError
from llamalab.generate.decode import Generation, Step
from llamalab.generate.sampling import SamplingParams


def benchmark(model: torch.nn.Module, step: Step, batch_size: int, prompt_len: int, new_tokens: int,
              repeats: int) -> dict:
    """Best-of-`repeats` prefill and decode throughput of random prompts, and the bandwidth decoding uses."""
    if min(batch_size, prompt_len, new_tokens, repeats) < 1:
        raise ConfigError("batch size, prompt length, new tokens and repeats must be positive")
    if prompt_len + new_tokens > model.args.max_seq_len:
        raise ConfigError(f"prompt length + new tokens must fit the context of {model.args.max_seq_len}")
    device = model.device
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
        "device": str(device), "dtype": str(model.dtype).removeprefix("torch."),
        "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "prefill_tokens_per_s": batch_size * prompt_len / prefill,
        "decode_tokens_per_s": batch_size / step_s, "decode_ms_per_step": step_s * 1000,
        "bytes_per_step": bytes_per_step, "decode_bandwidth_gb_s": bytes_per_step / step_s / 1e9,
        "copy_bandwidth_gb_s": copy / 1e9, "bandwidth_fraction": bytes_per_step / step_s / copy,
    }


def decode_bytes(model: torch.nn.Module, batch_size: int, context_len: int) -> int:
    """Bytes one decode step reads: the blocks', final norm's and head's weights, and the filled KV cache."""
    modules = [*model.layers, model.norm, model.output]
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}  # a tied head counts once
    cache = model.kv_cache
    weights = sum(t.nbytes for t in tensors.values()) - cache.nbytes  # the cache's buffers are the blocks' too
    return weights + cache.bytes_per_token() * batch_size * context_len


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second of the best of `repeats` copies of a large buffer (each copy reads and writes it)."""
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
