"""The ablation runner: every variant trained by the same trainer on the same data, token budget and
parameter count, then measured: validation loss, training and decoding speed, KV-cache bytes per token."""
from __future__ import annotations

import dataclasses
import re
import shutil
import statistics
from pathlib import Path

import torch
from matplotlib.figure import Figure

from llamalab.analysis import kv_cache_bytes
from llamalab.baselines.variants import Variant, VariantTransformer, matched_args
from llamalab.config import ModelArgs
from llamalab.data import prepare, train_tokenizer, write_stories
from llamalab.errors import ConfigError
from llamalab.files import atomic_output, write_json
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.train.batches import TokenData
from llamalab.train.config import TrainConfig
from llamalab.train.metrics import read_metrics
from llamalab.train.optim import build_optimizer
from llamalab.train.trainer import Trainer

# LLaMA, each of its changes undone one at a time, then GPT-2 and the original Transformer (decoder-only).
DEFAULT_VARIANTS = [
    "llama", "positions=sinusoidal", "positions=learned", "positions=none", "norm=layernorm",
    "norm_position=post", "ffn=gelu", "ffn=relu", "attention=gqa", "attention=mqa", "gpt2", "vaswani",
]
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def story_data(folder: str | Path, stories: int = 4000, vocab_size: int = 1024, seed: int = 0) -> Path:
    """The embedded story corpus, tokenized with a SentencePiece vocabulary trained on it, in `folder`
    (kept: a folder that already holds prepared data is used as it is)."""
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        corpus = write_stories(folder / "stories.jsonl", stories, seed)
        tokenizer = train_tokenizer([corpus], vocab_size, folder / "tokenizer.model")
        prepare([corpus], tokenizer, folder, val_fraction=0.02, progress=False)
    return folder


def ablation_config(data: str | Path, out_dir: str | Path, budget_tokens: int, seq_len: int = 128,
                    batch_size: int = 16, lr: float = 3e-3, seed: int = 0, progress: bool = True) -> TrainConfig:
    """The training run every variant gets: `budget_tokens` tokens, warmup + cosine, ten validation passes."""
    steps = budget_tokens // (batch_size * seq_len)
    if steps < 1:
        raise ConfigError(f"a budget of {budget_tokens} tokens is less than one batch of {batch_size} x {seq_len}; "
                          "raise --budget-tokens or lower --batch-size / --seq-len")
    return TrainConfig(data=str(data), out_dir=str(out_dir), seq_len=seq_len, batch_size=batch_size,
                       max_steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 20),
                       eval_every=max(1, steps // 10), eval_batches=8, log_every=max(1, steps // 50),
                       save_every=0, keep_last=1, seed=seed, progress=progress)


def run_dir(name: str) -> str:
    """A folder name for a variant spec: "ffn=gelu,norm=layernorm" -> "ffn-gelu_norm-layernorm"."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name.replace(",", "_"))


def train_variant(name: str, variant: Variant, base: ModelArgs, cfg: TrainConfig, data: TokenData,
                  device: torch.device) -> tuple[dict, VariantTransformer]:
    """Train one variant at the reference's parameter count; return its row of the results and the trained model."""
    args = matched_args(base, variant)
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = VariantTransformer(args, variant)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    trainer = Trainer(cfg, model, optimizer, data, device)
    shutil.rmtree(trainer.checkpoints, ignore_errors=True)  # every ablation run starts afresh
    summary = trainer.fit()
    shutil.rmtree(trainer.checkpoints, ignore_errors=True)  # a variant is not a loadable model: keep the metrics only
    metrics = Path(cfg.out_dir) / "metrics.jsonl"
    speeds = [r["tokens_per_s"] for r in read_metrics(metrics) if "tokens_per_s" in r]
    row = {
        "name": name,
        "variant": dataclasses.asdict(variant),
        "parameters": sum(p.numel() for p in model.parameters()),
        "hidden_dim": args.hidden_dim,
        "kv_heads": args.kv_heads,
        "steps": summary["step"],
        "tokens": summary["step"] * cfg.batch_size * cfg.seq_len,
        "val_loss": summary["val_loss"],
        "train_loss": summary["loss"],
        "tokens_per_s": statistics.median(speeds),
        "kv_cache_bytes_per_token": kv_cache_bytes(args, dtype=DTYPE_NAMES[model.dtype]),
        "metrics": str(metrics),
    }
    return row, model


@torch.no_grad()
def decode_speeds(models: list[VariantTransformer], prompt: list[int], new_tokens: int, rounds: int = 3) -> list[float]:
    """Greedy decoding speed of each model on its KV cache, batch 1: new tokens per second after the prefill.

    The models take turns (one warm-up run each, then `rounds` timed runs; the fastest counts), so that
    a change in the machine's load falls on all of them alike.
    """
    best = [0.0] * len(models)
    for timed in range(rounds + 1):
        for i, model in enumerate(models):
            generation = Generation(model.eval(), [prompt], new_tokens, sampling=SamplingParams(temperature=0.0))
            for _ in generation:
                pass
            if timed:
                speed = (len(generation.completions[0].tokens) - 1) / generation.timings["decode_s"]
                best[i] = max(best[i], speed)
    for model in models:
        model.clear_cache()
    return best


def run_ablation(variants: dict[str, Variant], base: ModelArgs, cfg: TrainConfig, device: torch.device,
                 say=print) -> list[dict]:
    """Train each variant with `cfg` (its out_dir gets one folder per variant); return one result per variant:
    parameters, matched FFN width, KV heads, final validation / training loss, median training tokens/s
    of the logged steps, KV-cache bytes per token and greedy decode tokens/s."""
    data = TokenData(cfg.data)
    base = base.replace(vocab_size=data.vocab_size, max_seq_len=cfg.seq_len)
    results, models = [], []
    for i, (name, variant) in enumerate(variants.items(), 1):
        say(f"[{i}/{len(variants)}] {name}")
        run_cfg = dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir) / run_dir(name)))
        result, model = train_variant(name, variant, base, run_cfg, data, device)
        results.append(result)
        models.append(model)
    say("decoding speed")
    prompt = data.tokens("val")[: cfg.seq_len // 4].tolist()
    speeds = decode_speeds(models, prompt, new_tokens=min(64, cfg.seq_len - len(prompt)))
    for result, speed in zip(results, speeds):
        result["decode_tokens_per_s"] = speed
    return results


def ablate(variants: dict[str, Variant], base: ModelArgs, cfg: TrainConfig, device: torch.device,
           budget_tokens: int, say=print) -> dict:
    """`llamalab ablate` in one call: `run_ablation`, then OUT_DIR/ablation.png (the loss curves) and
    OUT_DIR/ablation.json (the settings and every result), written atomically; returns that report."""
    out = Path(cfg.out_dir)
    results = run_ablation(variants, base, cfg, device, say)
    plot = out / "ablation.png"
    with atomic_output(plot) as tmp:
        plot_curves(results).savefig(tmp, format="png")
    report = {
        "budget_tokens": budget_tokens,
        "model": {"dim": base.dim, "n_layers": base.n_layers, "n_heads": base.n_heads, "seq_len": cfg.seq_len,
                  "tie_embeddings": base.tie_embeddings},
        "training": {"data": str(cfg.data), "batch_size": cfg.batch_size, "lr": cfg.lr, "steps": cfg.max_steps,
                     "seed": cfg.seed, "device": str(device), "threads": torch.get_num_threads()},
        "results": results,
        "plot": str(plot),
    }
    write_json(out / "ablation.json", report)
    return report


def plot_curves(results: list[dict]) -> Figure:
    """Validation loss (dots) and training loss (faint) of every variant against the tokens seen."""
    fig = Figure(figsize=(9, 5.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i, result in enumerate(results):
        records = read_metrics(Path(result["metrics"]))
        tokens_per_step = result["tokens"] / result["steps"]
        train = [(r["step"] * tokens_per_step, r["loss"]) for r in records if "loss" in r]
        val = [(r["step"] * tokens_per_step, r["val_loss"]) for r in records if "val_loss" in r]
        color, style = f"C{i % 10}", "o-" if i < 10 else "s--"  # ten colours, then dashed lines
        ax.plot(*zip(*train), color=color, alpha=0.25, linewidth=1)
        ax.plot(*zip(*val), style, color=color, markersize=3, label=f"{result['name']} ({result['val_loss']:.3f})")
    ax.set(xlabel="training tokens", ylabel="cross-entropy loss (nats/token)",
           title="ablation at equal parameters and tokens: validation (dots), training (faint)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 2 * max(r["val_loss"] for r in results)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
