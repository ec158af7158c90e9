"""What reading the KV cache through block tables costs: decode steps on the paged cache against the fixed-slot one.

    python bench/paged_attention.py [--preset stories15M] [--rows 8 32] [--lengths 128 512] [--steps 16] [--threads 1]

Random weights, float32 (bfloat16 on a GPU). For each (rows, length): the rows are prefilled to `length` positions,
then `--steps` decode steps run with per-row positions, on the fixed cache (attention slices each row's positions)
and on the paged cache (blocks of 16 interleaved over the pool, so each layer gathers every row's blocks into a
contiguous tensor before SDPA). The best of `--rounds` interleaved rounds counts; the ratio is paged / fixed time.
"""
from __future__ import annotations

import argparse
import time

import torch

from llamalab.config import ModelArgs
from llamalab.inference import load_model
from llamalab.model import Transformer

BLOCK = 16


def decode_ms(model: Transformer, rows: int, length: int, steps: int, paged: bool) -> float:
    """ms per decode step of `rows` rows at `length` positions (prefill excluded)."""
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
        for step in range(steps):
            positions = torch.full((rows,), length + step, device=device)
            model(tokens, positions, kv_len=length + step + 1, last_only=True)
        _sync(device)
    return (time.perf_counter() - start) / steps * 1000


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
    model = load_model(model_args, random_init=True, seed=0, device=args.device, threads=args.threads).model
    device, dtype = model.device, model.dtype
    print(f"{args.preset} on {device} ({dtype}), {torch.get_num_threads()} threads, {args.steps} decode steps, "
          f"best of {args.rounds}")
    print(f"{'rows':>5} {'length':>7} {'fixed ms/step':>14} {'paged ms/step':>14} {'paged/fixed':>12}")
    for rows in args.rows:
        for length in args.lengths:
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.rounds):
                for paged in (False, True):
                    best[paged] = min(best[paged], decode_ms(model, rows, length, args.steps, paged))
            print(f"{rows:>5} {length:>7} {best[False]:>14.2f} {best[True]:>14.2f} {best[True] / best[False]:>11.2f}x")


if __name__ == "__main__":
    main()
