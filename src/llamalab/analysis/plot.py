"""How memory and FLOPs per token grow with context length, one line per model (matplotlib, no pyplot state)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from llamalab.analysis.flops import forward_flops, training_flops
from llamalab.analysis.report import Workload
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.files import atomic_output


def context_lengths(max_len: int, start: int = 64) -> list[int]:
    """Powers of two from `start` up to `max_len`, and `max_len` itself."""
    return [*(n for n in (start << i for i in range(32)) if n < max_len), max_len]


def write_scaling_plot(path: str | Path, models: dict[str, ModelArgs], work: Workload = Workload()) -> Path:
    """`plot_scaling` written to `path` (atomically), in the format its suffix names (png, svg, pdf, ...)."""
    figure = plot_scaling(models, work)
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    if fmt not in figure.canvas.get_supported_filetypes():
        raise ConfigError(f"--plot {path}: matplotlib cannot write .{fmt}; end the name with .png, .svg or .pdf")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format=fmt, dpi=120)
    return Path(path)


def plot_scaling(models: dict[str, ModelArgs], work: Workload = Workload()) -> Figure:
    """Left: memory per GPU (inference: weights + KV cache; training: everything) against context length.
    Right: FLOPs per token (forward or training), solid, against the weight-matmul part alone, dashed."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    memory_ax, flops_ax = fig.subplots(1, 2)
    for i, (name, args) in enumerate(models.items()):
        lengths = context_lengths(args.max_seq_len)
        flops = [(training_flops if work.train else forward_flops)(args, n) for n in lengths]
        color = f"C{i % 10}"
        memory_ax.plot(lengths, [work.bytes_per_gpu(args, n) / 1e9 for n in lengths], color=color, marker=".",
                       label=name)
        flops_ax.plot(lengths, [f.total / n for f, n in zip(flops, lengths)], color=color, marker=".", label=name)
        flops_ax.plot(lengths, [f.matmul / n for f, n in zip(flops, lengths)], color=color, linestyle="--")
    what = "training" if work.train else "inference"
    layout = f", tp={work.tp} dp={work.dp}" if work.tp * work.dp > 1 else ""
    memory_ax.set(yscale="log", ylabel="GB per GPU", title=f"{what} memory, batch {work.batch}{layout}")
    flops_ax.set(yscale="log", ylabel="FLOPs per token", title=f"{what} FLOPs per token (dashed: matmuls alone)")
    for ax in (memory_ax, flops_ax):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    return fig
