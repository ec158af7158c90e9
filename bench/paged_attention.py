"""What reading the KV cache through block tables costs: decode steps on the paged cache against the fixed-slot one.

    python bench/paged_attention.py [--preset stories15M] [--rows 8 32] [--lengths 128 512] [--steps 16] [--threads 1]

Random weights, float32 (bfloat16 on a GPU). For each (rows, length): the rows are prefilled to `length` positions,
then `--steps` decode steps run with per-row positions, on the fixed cache (attention slices each row's positions)
and on the paged cache (blocks of 16 interleaved over the pool, so each layer gathers every row's blocks into a
contiguous tensor before SDPA). On CPU the C decode step (quantize/cpu_decode.c, what `llamalab serve` decodes with)
runs on both caches too: it reads each row's blocks in place, no gather. The best of `--rounds` interleaved rounds
counts; the ratios are paged / fixed time of each step, and the C step on the paged cache / the model's forward on the
fixed one.
"""
from __future__ import annotations

import argparse
import time

import torch

from llamalab.config import ModelArgs
from llamalab.inference import load_model
from llamalab.model import Transformer
from llamalab.quantize.native_decode import NativeStep

BLOCK = 16


def decode_ms(model: Transformer, rows: int, length: int, steps: int, paged: bool, step=None) -> float:
    """ms per decode step of `rows` rows at `length` positions (prefill excluded), by the model's forward or `step`."""
    total = length + steps + 1
    if paged:
        per_row = -(-total // BLOCK)
        cache = model.setup_paged_cache(rows * per_row, BLOCK, batch_size=rows, max_seq_len=total)
        for position in range(0, total, BLOCK):  # rows take blocks in turn: every row's blocks are scattered
            for row in range(rows):
                cache.reserve(row, min(position + BLOCK, total))
    else:
        model.setup_cache(rows, total)
    device = model.device
    generator = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, model.args.vocab_size, (rows, length), generator=generator).to(device)
    tokens = torch.randint(0, model.args.vocab_size, (rows, 1), generator=generator).to(device)
    with torch.inference_mode():
        model(prompt, 0)
        _sync(device)
        start = time.perf_counter()
        for i in range(steps):
            positions = torch.full((rows,), length + i, device=device)
            if step is None:
                model(tokens, positions, kv_len=length + i + 1, last_only=True)
            else:
                step(tokens, positions, length + i + 1)
        _sync(device)
    return (time.perf_counter() - start) / steps * 1000


def device_type(device: str) -> str:
    return torch.device(device).type


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stories15M")
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    model_args = ModelArgs.from_preset(args.preset, max_seq_len=max(args.lengths) + args.steps + 1)
    loaded = load_model(model_args, random_init=True, seed=0, device=args.device, threads=args.threads)
    model = loaded.model
    native = loaded.decode_step() if device_type(args.device) == "cpu" else None
    native = native if isinstance(native, NativeStep) else None  # the C step where it covers the model
    device, dtype = model.device, model.dtype
    print(f"{args.preset} on {device} ({dtype}), {torch.get_num_threads()} threads, {args.steps} decode steps, "
          f"best of {args.rounds}")
    header = f"{'rows':>5} {'length':>7} {'fixed ms/step':>14} {'paged ms/step':>14} {'paged/fixed':>12}"
    print(header + (f" {'C fixed ms':>11} {'C paged ms':>11} {'C paged/fixed':>14} {'C paged/fixed fwd':>18}"
                    if native else ""))
    variants = [(False, None), (True, None)] + ([(False, native), (True, native)] if native else [])
    for rows in args.rows:
        for length in args.lengths:
            best = [float("inf")] * len(variants)
            for _ in range(args.rounds):
                for i, (paged, step) in enumerate(variants):
                    best[i] = min(best[i], decode_ms(model, rows, length, args.steps, paged, step))
            line = f"{rows:>5} {length:>7} {best[0]:>14.2f} {best[1]:>14.2f} {best[1] / best[0]:>11.2f}x"
            if native:
                line += f" {best[2]:>11.2f} {best[3]:>11.2f} {best[3] / best[2]:>13.2f}x {best[3] / best[0]:>17.2f}x"
            print(line)


if __name__ == "__main__":
    main()
