"""The pictures of an `Inspection` (matplotlib PNGs) and one `index.html` that shows them with short captions."""
from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from llamalab.analysis.inspect import Inspection
from llamalab.errors import OutputError
from llamalab.files import atomic_output

Label = Callable[[int], str]  # token id -> the text to show for it


def write_report(result: Inspection, out_dir: str | Path, label: Label = str, title: str = "model") -> Path:
    """Write the PNGs, `inspection.json` and `index.html` into out_dir (each file atomically); return the page."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; give --out a folder (new or existing) for the pictures")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder {out} ({e.strerror or e}); choose another --out") from None
    sections = [
        ("Logit lens", [(_save(logit_lens_figure(result, label), out, "logit_lens.png"), LENS_CAPTION)]),
        ("Attention", [(_save(attention_figure(result, layer, label), out, f"attention_layer_{layer:02d}.png"),
                        f"Layer {layer}. " + (ATTENTION_CAPTION if layer == 0 else ""))
                       for layer in range(len(result.attention))]
         + [(_save(entropy_figure(result), out, "attention_entropy.png"), ENTROPY_CAPTION)]),
        ("RoPE", [(_save(rope_figure(result), out, "rope.png"), ROPE_CAPTION)]),
        ("Activations", [(_save(activations_figure(result), out, "activations.png"), ACTIVATIONS_CAPTION)]),
    ]
    if result.cost:
        sections.append(("Cost as it runs", [(_save(cost_figure(result), out, "cost.png"), COST_CAPTION)]))
    with atomic_output(out / "inspection.json") as tmp:
        tmp.write_text(json.dumps(to_json(result, label)), encoding="utf-8")
    page = out / "index.html"
    with atomic_output(page) as tmp:
        tmp.write_text(_page(result, sections, label, title), encoding="utf-8")
    return page


def to_json(result: Inspection, label: Label = str) -> dict:
    """The numbers of an inspection as plain JSON (attention maps left out: they are the pictures)."""
    layers = range(result.lens_top_ids.shape[0])
    return {
        "tokens": result.tokens, "token_text": [label(t) for t in result.tokens],
        "chosen": result.chosen.tolist(), "chosen_prob": result.chosen_prob.tolist(),
        "logit_lens_top": [[[{"id": int(i), "text": label(int(i)), "p": float(p)}
                             for i, p in zip(result.lens_top_ids[layer, s], result.lens_top_probs[layer, s])]
                            for s in range(len(result.tokens))] for layer in layers],
        "attention_entropy": result.entropy.tolist(), "n_kv_heads": result.n_kv_heads,
        "residual_rms": result.residual_rms.tolist(), "attention_rms": result.attention_rms.tolist(),
        "ffn_rms": result.ffn_rms.tolist(), "outliers": result.outliers,
        "rope_frequencies": result.rope_frequencies.tolist(),
        "rope_unscaled_frequencies": None if result.rope_unscaled is None else result.rope_unscaled.tolist(),
        "rope_dot": {"distance": result.rope_distances.tolist(), "dot": result.rope_dot.tolist()},
        "cost": result.cost, "checks": result.checks,
    }


# -- figures ----------------------------------------------------------------------------------------------------
def logit_lens_figure(result: Inspection, label: Label) -> Figure:
    """Layers × positions: the probability each layer's lens gives the token the model finally picks there."""
    probs = result.chosen_prob.numpy()  # (n_layers, seqlen)
    n_layers, seqlen = probs.shape
    fig = Figure(figsize=(max(6, 0.9 * seqlen + 2), max(4, 0.28 * n_layers + 1.5)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
    fig.colorbar(image, ax=ax, label="p(final choice)")
    if seqlen * n_layers <= 2000:  # the lens' own top token in each cell
        for layer in range(n_layers):
            for pos in range(seqlen):
                ax.text(pos, layer, _short(label(int(result.lens_top_ids[layer, pos, 0]))), ha="center",
                        va="center", fontsize=6, color="white" if probs[layer, pos] < 0.5 else "black")
    ax.set_xticks(range(seqlen), [_short(label(t)) for t in result.tokens], rotation=60, fontsize=7)
    top = ax.secondary_xaxis("top")
    top.set_xticks(range(seqlen), [_short(label(int(t))) for t in result.chosen], rotation=60, fontsize=7)
    top.set_xlabel("the model's next token")
    ax.set_yticks(range(0, n_layers, 1 if n_layers <= 40 else 5))
    ax.set(xlabel="input token", ylabel="layer (output of block)",
           title="logit lens (cell text: that layer's top guess)")
    return fig


def attention_figure(result: Inspection, layer: int, label: Label) -> Figure:
    """One layer's attention maps: a row per key/value head, its query heads side by side."""
    probs = result.attention[layer]  # (n_heads, seqlen, seqlen)
    n_heads, seqlen, _ = probs.shape
    groups = result.n_kv_heads
    per_group = n_heads // groups
    size = 1.6 + 0.09 * seqlen
    fig = Figure(figsize=(size * per_group + 1, size * groups + 0.6), layout="constrained")
    axes = fig.subplots(groups, per_group, squeeze=False)
    ticks = [_short(label(t), 6) for t in result.tokens] if seqlen <= 24 else None
    for head in range(n_heads):
        ax = axes[head // per_group][head % per_group]
        ax.imshow(probs[head].numpy(), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"q head {head} · kv {head // per_group}  H={result.entropy[layer, head]:.2f}", fontsize=8)
        if ticks:
            ax.set_xticks(range(seqlen), ticks, rotation=90, fontsize=5)
            ax.set_yticks(range(seqlen), ticks, fontsize=5)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"layer {layer}: attention (rows: queries, columns: keys; {groups} KV heads × {per_group} "
                 "query heads each)", fontsize=9)
    return fig


def entropy_figure(result: Inspection) -> Figure:
    fig = Figure(figsize=(max(5, 0.5 * result.entropy.shape[1] + 2), max(3.5, 0.22 * result.entropy.shape[0] + 1.5)),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(result.entropy.numpy(), aspect="auto", cmap="cividis", origin="lower")
    fig.colorbar(image, ax=ax, label="mean entropy (nats)")
    for g in range(1, result.n_kv_heads):
        ax.axvline(g * result.entropy.shape[1] / result.n_kv_heads - 0.5, color="white", linewidth=1)
    limit = math.log(max(len(result.tokens), 2))
    ax.set_yticks(range(0, result.entropy.shape[0], 1 if result.entropy.shape[0] <= 40 else 5))
    ax.set_xticks(range(result.entropy.shape[1]))
    ax.set(xlabel="query head (white lines: KV-head groups)", ylabel="layer",
           title=f"attention entropy per head (0: one key; {limit:.2f}: uniform over the prompt)")
    return fig


def rope_figure(result: Inspection) -> Figure:
    fig = Figure(figsize=(11, 4), layout="constrained")
    freq_ax, dot_ax = fig.subplots(1, 2)
    pairs = range(len(result.rope_frequencies))
    freq_ax.plot(pairs, result.rope_frequencies.numpy(), marker=".", label="used")
    if result.rope_unscaled is not None:
        freq_ax.plot(pairs, result.rope_unscaled.numpy(), linestyle="--", label="before Llama 3.1 scaling")
    freq_ax.set(yscale="log", xlabel="pair i of the head dimensions", ylabel="radians per position",
                title="rotation frequency of each pair")
    freq_ax.legend()
    dot_ax.plot(result.rope_distances.numpy(), result.rope_dot.numpy(), linewidth=0.7)
    dot_ax.set(xscale="symlog", xlabel="relative distance (query position − key position)", ylabel="q·k",
               title="q·k of q = k = (1, …, 1) rotated d positions apart")
    for ax in (freq_ax, dot_ax):
        ax.grid(True, alpha=0.3)
    return fig


def activations_figure(result: Inspection) -> Figure:
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    rms_ax, max_ax = fig.subplots(1, 2)
    layers = range(len(result.residual_rms))
    for values, name in ((result.residual_rms, "residual stream"), (result.attention_rms, "attention output"),
                         (result.ffn_rms, "feed-forward output")):
        rms_ax.plot(layers, values.numpy(), marker=".", label=name)
    rms_ax.set(yscale="log", xlabel="layer", ylabel="RMS", title="activation size per layer")
    rms_ax.grid(True, alpha=0.3)
    rms_ax.legend()
    image = max_ax.imshow(result.channel_max.numpy(), aspect="auto", cmap="inferno", origin="lower",
                          norm="log")
    fig.colorbar(image, ax=max_ax, label="max |activation| over positions")
    max_ax.set(xlabel="channel", ylabel="layer", title="residual stream per channel (bright columns: outliers)")
    return fig


def cost_figure(result: Inspection) -> Figure:
    fig = Figure(figsize=(11, 4), layout="constrained")
    kv_ax, time_ax = fig.subplots(1, 2)
    positions = [c["position"] for c in result.cost]
    kv_ax.plot(positions, [c["kv_bytes"] / 2**10 for c in result.cost], "o", markersize=3, label="measured")
    kv_ax.plot(positions, [c["kv_bytes_predicted"] / 2**10 for c in result.cost], "-", label="llamalab analyze")
    kv_ax.set(xlabel="positions in the cache", ylabel="KiB", title="KV-cache bytes as the sequence grows")
    kv_ax.legend()
    time_ax.plot(positions, [c["decode_ms"] for c in result.cost], ".-", label="measured decode step")
    time_ax.set(xlabel="position of the new token", ylabel="ms per token", title="decode time per token")
    flops_ax = time_ax.twinx()
    flops_ax.plot(positions, [c["flops_predicted"] / 1e6 for c in result.cost], "--", color="C1",
                  label="predicted FLOPs (analyze)")
    flops_ax.set_ylabel("MFLOPs per token (predicted)")
    time_ax.set_ylim(bottom=0)
    flops_ax.set_ylim(0, 1.2 * max(c["flops_predicted"] for c in result.cost) / 1e6)
    time_ax.legend(loc="upper left")
    flops_ax.legend(loc="lower right")
    for ax in (kv_ax, time_ax):
        ax.grid(True, alpha=0.3)
    return fig


# -- the page -------------------------------------------------------------------------------------------------------
LENS_CAPTION = ("Each layer's residual stream read out through the final norm and the output head, as if the model "
                "stopped there. Colour: the probability of the token the full model finally predicts at that "
                "position; text: that layer's own best guess. Early layers guess generic tokens; the answer forms "
                "in the last layers. The top row is the model's output exactly (checked below).")
ATTENTION_CAPTION = ("Each map: one query head; row i shows how much position i attends to each earlier position "
                     "(the upper triangle is masked, every row sums to 1). Heads in one row share a key/value head "
                     "(grouped-query attention). H is the mean entropy of the rows. Many heads attend mostly to the "
                     "first token (an 'attention sink'); others look at the previous token.")
ENTROPY_CAPTION = "Mean entropy of every head's attention rows: low = focused on few positions, high = spread out."
ROPE_CAPTION = ("Left: RoPE rotates each pair of a head's dimensions by position × frequency; fast pairs encode "
                "nearby order, slow pairs long range (Llama 3.1 slows the slow ones further). Right: the dot "
                "product of a query and a key rotated to positions d apart depends only on d; for equal vectors it "
                "is largest at d = 0 and decays, oscillating, with distance (RoPE's long-term decay).")
ACTIVATIONS_CAPTION = ("Left: the residual stream grows through the layers; each block adds its attention and "
                       "feed-forward outputs. Right: a few channels carry much larger values than the rest at every "
                       "layer (often at the first token, the one most heads attend to) — these outliers are why int8 "
                       "activations lose accuracy while int8 weights do not.")
COST_CAPTION = ("Left: the KV cache grows by the same bytes at every token (2 × layers × KV heads × head_dim × "
                "bytes per element), as `llamalab analyze` predicts. Right: the time of each decode step next to "
                "the predicted FLOPs; at small sizes the time is dominated by reading the weights, not by attention.")


def _page(result: Inspection, sections, label: Label, title: str) -> str:
    esc = html.escape
    tokens = "".join(f"<span class=tok title='id {t}'>{esc(label(t))}</span>" for t in result.tokens)
    checks = "".join(f"<tr><td>{esc(name.replace('_', ' '))}</td><td>{value:.3g}</td></tr>"
                     for name, value in result.checks.items())
    body = []
    for heading, figures in sections:
        body.append(f"<h2>{esc(heading)}</h2>")
        for path, caption in figures:
            body.append(f"<figure><img src='{esc(path.name)}' alt='{esc(heading)}'>"
                        f"<figcaption>{esc(caption)}</figcaption></figure>")
        if heading == "Activations":
            rows = "".join(f"<tr><td>{o['layer']}</td><td>{o['position']} ({esc(label(result.tokens[o['position']]))})"
                           f"</td><td>{o['channel']}</td><td>{o['value']:.4g}</td></tr>" for o in result.outliers)
            body.append("<p>The channels with the largest activations of the residual stream, where each peaks:</p>"
                        "<table><tr><td>layer</td>"
                        f"<td>position (token)</td><td>channel</td><td>value</td></tr>{rows}</table>")
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>llamalab inspect: {esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; }} figure {{ margin: 1.5em 0; }}
figcaption {{ font-size: 0.9em; color: #444; max-width: 60em; }}
.tok {{ background: #eef; border: 1px solid #ccd; margin: 1px; padding: 0 3px; font-family: monospace;
        white-space: pre; }}
table {{ border-collapse: collapse; }} td {{ border: 1px solid #ccc; padding: 2px 8px; }}
</style></head><body>
<h1>Inside {esc(title)}</h1>
<p>Prompt ({len(result.tokens)} tokens): {tokens}</p>
<h2>Checks against the model's own computation</h2>
<p>Largest deviation of each picture's numbers from what the model computed itself (0 = exact).</p>
<table>{checks}</table>
{''.join(body)}
</body></html>
"""


def _save(fig: Figure, out: Path, name: str) -> Path:
    with atomic_output(out / name) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out / name


def _short(text: str, limit: int = 8) -> str:
    """A token's text for a tick label: whitespace made visible, long ones cut."""
    text = text.replace("\n", "↵").replace(" ", "·") or "∅"
    return text if len(text) <= limit else text[: limit - 1] + "…"
