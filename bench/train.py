"""CPU training throughput of the stories15M shape: llamalab's `Trainer.train_step` against a plain Hugging Face
`LlamaForCausalLM` training step, same batches, same AdamW settings, in the same run.

    python bench/train.py [--batch-size 8] [--seq-len 256] [--steps 3] [--rounds 3] [--no-compile]

Variants (each timed `--steps` steps a round, rounds interleaved, best round reported):
  llamalab        `llamalab train` with no flags: dtype auto (bf16 autocast where the CPU has native bf16, as
                  here with AVX512-BF16; else float32), eager, fused AdamW, chunked head + loss
  llamalab fast   the same with --compile
  llamalab fp32c  float32, torch.compile
  llamalab fp32   eager float32
  HF fp32         `model(input_ids, labels=...).loss.backward(); AdamW.step()`: the plain HF step
  HF bf16         the same under bf16 autocast
The headline ratios are llamalab (default and --compile) over HF fp32; the same-precision ratios show where the
speed comes from: the chunked head + loss (no 262 MB logits tensor) in float32, bf16 autocast on top.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llamalab.config import ModelArgs
from llamalab.data import prepare, train_tokenizer, write_stories
from llamalab.train.batches import Batches, TokenData
from llamalab.train.config import TrainConfig
from llamalab.train.trainer import build_trainer, resolve_dtype

PRESET = "stories15M"
LR, BETAS, WEIGHT_DECAY = 5e-4, (0.9, 0.95), 0.1


def story_data(folder: Path) -> Path:
    """Token shards of 2,000 generated stories (the ids' values do not change the speed of a step)."""
    stories = write_stories(folder / "stories.jsonl", 2000)
    tokenizer = train_tokenizer([stories], 1024, folder / "tokenizer.model")
    prepare([stories], tokenizer, folder / "data", val_fraction=0.05, workers=1, progress=False)
    return folder / "data"


def llamalab_step(data: Path, out: Path, batch_size: int, seq_len: int, dtype: str, compile: bool):
    cfg = TrainConfig(data=str(data), out_dir=str(out), preset=PRESET, model={"vocab_size": 32000}, seq_len=seq_len,
                      batch_size=batch_size, lr=LR, beta1=BETAS[0], beta2=BETAS[1], weight_decay=WEIGHT_DECAY,
                      warmup_steps=0, dtype=dtype, compile=compile, progress=False)
    torch.manual_seed(0)
    return build_trainer(cfg, torch.device("cpu")).train_step


def hf_step(data: Path, batch_size: int, seq_len: int, autocast: bool):
    """A plain HF training step on the same batches (labels = inputs: HF shifts them itself)."""
    args = ModelArgs.from_preset(PRESET)
    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_hidden_dim,
                         num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=seq_len, rms_norm_eps=args.norm_eps,
                         rope_theta=args.rope_theta, tie_word_embeddings=args.tie_embeddings,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    batches = Batches(TokenData(data).tokens("train"), seq_len, batch_size, seed=TrainConfig().seed)

    def step():
        inputs, _ = batches.next()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="llamalab fast without torch.compile")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = story_data(Path(tmp))
        variants = {
            "llamalab": llamalab_step(data, Path(tmp) / "default", args.batch_size, args.seq_len, "auto", False),
            "llamalab fast": llamalab_step(data, Path(tmp) / "fast", args.batch_size, args.seq_len, "auto",
                                           not args.no_compile),
            "llamalab fp32c": llamalab_step(data, Path(tmp) / "fp32c", args.batch_size, args.seq_len, "float32",
                                            not args.no_compile),
            "llamalab fp32": llamalab_step(data, Path(tmp) / "fp32", args.batch_size, args.seq_len, "float32", False),
            "HF fp32": hf_step(data, args.batch_size, args.seq_len, autocast=False),
            "HF bf16": hf_step(data, args.batch_size, args.seq_len, autocast=True),
        }
        for name, step in variants.items():  # warm up (and compile) outside the timing
            start = time.perf_counter()
            step(), step()
            print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(args.rounds):
            for name, step in variants.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    tokens = args.batch_size * args.seq_len
    print(f"\n{PRESET}, batch {args.batch_size} x {args.seq_len} tokens, {torch.get_num_threads()} threads")
    for name, seconds in best.items():
        print(f"  {name:<14} {seconds * 1000:8.0f} ms/step {tokens / seconds:9,.0f} tokens/s")
    ratio = {name: best["HF fp32"] / best[name] for name in best}
    dtype = resolve_dtype("auto", torch.device("cpu"))
    print(f"\nover the plain HF step (HF fp32): llamalab {ratio['llamalab']:.2f}x, llamalab fast "
          f"{ratio['llamalab fast']:.2f}x (dtype auto = {dtype} on this CPU)")
    same = best["HF bf16"] if dtype == "bfloat16" else best["HF fp32"]
    print(f"same precision: llamalab fp32 / HF fp32 {ratio['llamalab fp32']:.2f}x, llamalab fp32c / HF fp32 "
          f"{ratio['llamalab fp32c']:.2f}x, llamalab / HF {dtype} {same / best['llamalab']:.2f}x, "
          f"llamalab fast / HF {dtype} {same / best['llamalab fast']:.2f}x")


if __name__ == "__main__":
    main()
