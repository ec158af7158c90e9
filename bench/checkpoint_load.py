"""Loading a Hugging Face checkpoint: `llamalab.checkpoint.load` against `transformers`' from_pretrained, same run.

    python bench/checkpoint_load.py [--preset stories110M] [--dtype float32] [--rounds 3]

One random-weight checkpoint is written once as HF (config.json + model.safetensors) and once in our native
format (read by llamalab only, for reference: no q/k permutation to copy); each loader then runs in a
fresh process (so neither benefits from the other's imports or allocations), `--rounds` times, interleaved.
Reported per loader (best round): the wall time of the first load in a process (lazy imports included) and of
a second one, the resident memory the second one added (ours maps the file, so pages are read only when
used), and the resident memory after one forward pass of 16 tokens.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from llamalab.checkpoint import save
from llamalab.config import ModelArgs
from llamalab.model import Transformer

CHILD = r"""
import gc, json, sys, time, torch
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
folder, loader, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
torch.set_num_threads(1)
if loader.startswith("llamalab"):
    from llamalab.checkpoint import load
else:
    import transformers
    def load(folder, dtype):
        return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
result = {}
for run in ("cold", "warm"):  # cold: the first load in a process (lazy imports included); warm: the next one
    gc.collect()
    before = rss()
    start = time.perf_counter()
    model = load(folder, dtype=dtype)
    result[run + "_seconds"] = time.perf_counter() - start
    result[run + "_mib"] = (rss() - before) / 2**20
    if run == "cold":
        del model
with torch.no_grad():
    model(torch.arange(16)[None])
result["after_forward_mib"] = (rss() - before) / 2**20
print(json.dumps(result))
"""


def run_child(folder: Path, loader: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), loader, dtype], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stories110M")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    args = ModelArgs.from_preset(opts.preset, tie_embeddings=False)
    with tempfile.TemporaryDirectory() as tmp:
        model = Transformer(args)
        folders = {"llamalab": Path(tmp) / "hf", "transformers": Path(tmp) / "hf",
                   "llamalab-native": Path(tmp) / "native"}
        save(model, folders["llamalab"], format="hf", dtype=getattr(torch, opts.dtype))
        save(model, folders["llamalab-native"], format="native", dtype=getattr(torch, opts.dtype))
        size = sum(f.stat().st_size for f in folders["llamalab"].iterdir()) / 2**20
        results = {loader: [] for loader in folders}
        for _ in range(opts.rounds):
            for loader, folder in folders.items():
                results[loader].append(run_child(folder, loader, opts.dtype))
    print(f"{opts.preset}, {opts.dtype}, checkpoint {size:.0f} MiB; best of {opts.rounds} rounds")
    best = {loader: {key: min(r[key] for r in runs) for key in runs[0]} for loader, runs in results.items()}
    for loader, r in best.items():
        print(f"  {loader:<15} cold load {r['cold_seconds']:.2f} s, warm load {r['warm_seconds']:.2f} s; warm load "
              f"added {r['warm_mib']:.0f} MiB resident, {r['after_forward_mib']:.0f} MiB after a forward pass")
    for run in ("cold", "warm"):
        ratio = best["transformers"][f"{run}_seconds"] / best["llamalab"][f"{run}_seconds"]
        print(f"  {run} load time ratio transformers / llamalab: {ratio:.1f}x")

if __name__ == "__main__":
    main()
