"""GPU training speed (issue 10): tokens/s and MFU of llamalab's `Trainer.train_step` against a plain Hugging Face
`LlamaForCausalLM` training step, in the same run, on one GPU.

    python bench/gpu_train.py [--preset llama3.2-1b] [--batch-size 4] [--seq-len 2048] [--steps 10]
                              [--activation-checkpointing auto|on|off] [--json] [--save FILE]
    python bench/gpu_train.py --device cpu --preset debug        # seconds: the script end to end on a CPU

Variants, each `--warmup` untimed steps (compilation) then `--steps` timed steps; the first is freed before
the second is built, so that each has the whole GPU:
  llamalab  `build_trainer(...).train_step` as `llamalab train --dtype bfloat16 --compile` runs it: float32
            master weights under bf16 autocast, torch.compile, fused AdamW, SDPA (flash) attention, gradient
            clipping at 1.0; activation checkpointing only where `analysis.training_memory` says the step would
            not fit in the free GPU memory without it (`--activation-checkpointing auto`)
  hf        the issue's peer: bf16 weights, SDPA, `model(input_ids, labels=input_ids).loss.backward()`, fused
            AdamW, no clipping; activation checkpointing by the same rule
Both draw the same token windows from a small generated corpus (the ids' values do not change the speed).
MFU = tokens/s × (6·N + 12·L·dim·seq) / the datasheet bf16 peak (`analysis.mfu`; or `--peak-tflops`).
torch.compile is on by default on CUDA only (`--compile` / `--no-compile`).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from gpu_common import add_device_arguments, emit, release, say, setup, synchronize
from transformers import LlamaConfig, LlamaForCausalLM

from llamalab.analysis import mfu, training_memory
from llamalab.checkpoint.hf import hf_config
from llamalab.config import ModelArgs
from llamalab.data import prepare, train_tokenizer, write_stories
from llamalab.train.batches import Batches, TokenData
from llamalab.train.config import TrainConfig
from llamalab.train.trainer import build_trainer

LR, BETAS, WEIGHT_DECAY = 3e-4, (0.9, 0.95), 0.1
SEED = TrainConfig().seed
DATA_VOCAB = 320  # ids of the generated corpus' tokenizer
FREE_MEMORY_USE = 0.9  # plan a step to fill at most this share of the free GPU memory


@dataclass
class Row:
    """One measured variant."""

    variant: str
    tokens_per_s: float
    step_ms: float
    compile_s: float  # the first (warm-up) step's wall time
    activation_checkpointing: bool
    peak_memory_gb: float | None
    mfu: float | None


def token_data(folder: Path, batch_size: int, seq_len: int) -> Path:
    """Token shards of generated stories holding a few batches and a validation window."""
    n = 100 + (batch_size + 2) * seq_len // 200  # ~450 tokens a story: twice what batch_size + 2 windows need
    stories = write_stories(folder / "stories.jsonl", n)
    tokenizer = train_tokenizer([stories], DATA_VOCAB, folder / "tokenizer.model")
    prepare([stories], tokenizer, folder / "data", val_fraction=0.2, workers=1, progress=False)
    return folder / "data"


def needs_checkpointing(args: ModelArgs, batch_size: int, seq_len: int, precision: str, device: torch.device) -> bool:
    """Whether `analysis.training_memory` puts the step without activation checkpointing over the free GPU memory."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return training_memory(args, batch_size, seq_len, precision).total > FREE_MEMORY_USE * free


def llamalab_step(args: ModelArgs, preset: str, data: Path, out: Path, options, device: torch.device,
                  checkpointing: bool) -> Callable[[], object]:
    """Our trainer's step on the preset's shape (its vocabulary kept), bf16 autocast, compiled as asked."""
    cfg = TrainConfig(data=str(data), out_dir=str(out), preset=preset, model={"vocab_size": args.vocab_size},
                      seq_len=options.seq_len, batch_size=options.batch_size, lr=LR, beta1=BETAS[0], beta2=BETAS[1],
                      weight_decay=WEIGHT_DECAY, warmup_steps=0, dtype="bfloat16", compile=options.compile,
                      activation_checkpointing=checkpointing, progress=False, seed=SEED)
    torch.manual_seed(SEED)
    return build_trainer(cfg, device).train_step


def hf_step(args: ModelArgs, data: Path, options, device: torch.device, checkpointing: bool) -> Callable[[], object]:
    """A plain HF training step in bf16 weights on the same windows (labels = inputs: HF shifts them itself)."""
    config = LlamaConfig(**hf_config(args))
    config._attn_implementation = "sdpa"
    torch.manual_seed(SEED)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=True)
    batches = Batches(TokenData(data).tokens("train"), options.seq_len, options.batch_size, seed=SEED)

    def step():
        inputs, _ = batches.next()
        inputs = inputs.to(device)
        model(input_ids=inputs, labels=inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(name: str, make_step: Callable[[], Callable[[], object]], checkpointing: bool, args: ModelArgs,
            options, device: torch.device, peak_flops: float | None) -> Row:
    """Build a variant, warm it up, time `options.steps` steps, free it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    say(f"building {name}{' (activation checkpointing)' if checkpointing else ''}")
    step = make_step()
    start = time.perf_counter()
    for i in range(options.warmup):
        step()
        synchronize(device)
        if i == 0:
            compile_s = time.perf_counter() - start
            say(f"{name}: first step {compile_s:.1f} s")
    say(f"timing {name}: {options.steps} steps")
    start = time.perf_counter()
    for _ in range(options.steps):
        step()
    synchronize(device)
    step_s = (time.perf_counter() - start) / options.steps
    tokens_per_s = options.batch_size * options.seq_len / step_s
    peak_memory = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    del step
    release(device)
    return Row(name, tokens_per_s, 1000 * step_s, compile_s, checkpointing, peak_memory,
               mfu(tokens_per_s, args, options.seq_len, peak_flops) if peak_flops else None)


def print_table(report: dict) -> None:
    peak = f"{report['peak_tflops']:.0f} TFLOP/s" if report["peak_tflops"] else "no known peak"
    print(f"{report['preset']}, batch {report['batch_size']} x {report['seq_len']} tokens, bf16, on {report['device']} "
          f"(MFU against {peak}), torch {report['torch']}, transformers {report['transformers']}")
    print(f"{'variant':<10} {'tokens/s':>10} {'ms/step':>9} {'MFU':>6} {'first step s':>12} {'checkpointing':>13} "
          f"{'peak GB':>8}")
    for r in report["rows"]:
        mfu_text = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        memory = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f}"
        checkpointing = "yes" if r["activation_checkpointing"] else "no"
        print(f"{r['variant']:<10} {r['tokens_per_s']:>10,.0f} {r['step_ms']:>9.1f} {mfu_text:>6} "
              f"{r['compile_s']:>12.1f} {checkpointing:>13} {memory:>8}")
    print(f"llamalab / hf: {report['ratio']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama3.2-1b")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA)")
    parser.add_argument("--activation-checkpointing", choices=["auto", "on", "off"], default="auto")
    add_device_arguments(parser)
    options = parser.parse_args()
    device, name, peak_flops = setup(options)
    options.compile = device.type == "cuda" if options.compile is None else options.compile
    options.warmup = max(1, options.warmup)
    args = ModelArgs.from_preset(options.preset)
    args = args.replace(vocab_size=max(args.vocab_size, DATA_VOCAB))  # only the debug preset's is smaller
    options.seq_len = min(options.seq_len, args.max_seq_len)

    def checkpointing(precision: str) -> bool:
        if options.activation_checkpointing != "auto":
            return options.activation_checkpointing == "on"
        return needs_checkpointing(args, options.batch_size, options.seq_len, precision, device)

    with tempfile.TemporaryDirectory() as tmp:
        data = token_data(Path(tmp), options.batch_size, options.seq_len)
        ours = checkpointing("mixed")
        rows = [measure("llamalab", lambda: llamalab_step(args, options.preset, data, Path(tmp) / "run", options,
                                                          device, ours), ours, args, options, device, peak_flops)]
        theirs = checkpointing("bf16")
        rows.append(measure("hf", lambda: hf_step(args, data, options, device, theirs), theirs, args, options, device,
                            peak_flops))
    report = {"preset": options.preset, "device": name, "torch": torch.__version__,
              "transformers": transformers.__version__, "batch_size": options.batch_size, "seq_len": options.seq_len,
              "compile": options.compile, "peak_tflops": peak_flops / 1e12 if peak_flops else None,
              "rows": [asdict(r) for r in rows], "ratio": rows[0].tokens_per_s / rows[1].tokens_per_s}
    emit(report, options, print_table)


if __name__ == "__main__":
    main()
