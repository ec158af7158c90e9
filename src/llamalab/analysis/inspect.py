"""Look inside a running model from outside it: the logit lens, attention maps, RoPE, activations, KV-cache cost.

Forward hooks (registered here, removed after the pass; nothing in `model/`) record each block's output (the
residual stream), each attention's input and output and each feed-forward's output. Everything else is computed
from those records with the model's own weights, and checked against what the model computed itself:
the last layer's logit lens against its logits, the attention weights times the values against the output of its
fused attention, the hooked pass against an unhooked one, the measured KV-cache bytes against
`analysis.kv_cache_bytes`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llamalab.analysis.flops import decode_flops
from llamalab.analysis.memory import kv_cache_bytes
from llamalab.config import ModelArgs
from llamalab.model import Transformer, apply_rope, repeat_kv, rope_frequencies, rope_tables

TORCH_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Recording:
    """What the hooks saw in one pass over tokens (1, seqlen); per layer, each (seqlen, dim) unless said."""

    residual: list[torch.Tensor] = field(default_factory=list)  # block outputs
    attention_input: list[torch.Tensor] = field(default_factory=list)  # attention_norm(x)
    attention_output: list[torch.Tensor] = field(default_factory=list)  # after wo
    ffn_output: list[torch.Tensor] = field(default_factory=list)
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # the cos, sin the attentions got (1, seqlen, hd/2)


@dataclass
class Inspection:
    """The numbers `llamalab inspect` draws; every tensor on the CPU in float32."""

    tokens: list[int]
    n_kv_heads: int
    lens_top_ids: torch.Tensor  # (n_layers, seqlen, k) most likely next tokens under each layer's logit lens
    lens_top_probs: torch.Tensor  # (n_layers, seqlen, k)
    chosen: torch.Tensor  # (seqlen,) the model's own next token at each position (its argmax)
    chosen_prob: torch.Tensor  # (n_layers, seqlen) that token's probability under each layer's lens
    attention: list[torch.Tensor]  # per layer (n_heads, seqlen, seqlen), rows = queries
    entropy: torch.Tensor  # (n_layers, n_heads) mean attention entropy (nats) over the positions after the first
    residual_rms: torch.Tensor  # (n_layers,)
    attention_rms: torch.Tensor  # (n_layers,)
    ffn_rms: torch.Tensor  # (n_layers,)
    channel_max: torch.Tensor  # (n_layers, dim) largest |residual| of each channel over the positions
    outliers: list[dict]  # the channels with the largest residual activations: layer, position, channel, value
    rope_frequencies: torch.Tensor  # (head_dim/2,) as the model uses them
    rope_unscaled: torch.Tensor | None  # (head_dim/2,) before Llama 3.1 scaling, when the model scales
    rope_distances: torch.Tensor  # (n,) relative distances
    rope_dot: torch.Tensor  # (n,) q·k of q = k = all ones at those distances
    cost: list[dict]  # per decoded token: position, kv bytes measured / predicted, decode ms, predicted FLOPs
    checks: dict[str, float] = field(default_factory=dict)  # largest deviation of each check (0 = exact)


def record(model: Transformer, tokens: torch.Tensor) -> tuple[torch.Tensor, Recording]:
    """Logits (1, seqlen, vocab) of a plain causal pass with every layer's hooks recording, and the records."""
    rec = Recording()
    handles = []

    def keep(store):
        return lambda module, args, out: store.append(out[0].detach().float())

    def attention_input(module, args):
        rec.attention_input.append(args[0][0].detach().float())
        if rec.rope is None:
            rec.rope = (args[1].detach(), args[2].detach())

    try:
        for layer in model.layers:
            handles.append(layer.register_forward_hook(keep(rec.residual)))
            handles.append(layer.attention.register_forward_pre_hook(attention_input))
            handles.append(layer.attention.register_forward_hook(keep(rec.attention_output)))
            handles.append(layer.feed_forward.register_forward_hook(keep(rec.ffn_output)))
        with torch.no_grad():
            logits = model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return logits, rec


@torch.no_grad()
def attention_weights(attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / √d) under the causal mask, (n_heads, seqlen, seqlen), of one attention module on its input
    x (seqlen, dim) in the model's compute `dtype`, written out with its own weights; and those weights times the
    values, through wo (seqlen, dim)."""
    seqlen = x.shape[0]
    x = x[None].to(dtype)
    q = attention.wq(x).view(1, seqlen, -1, attention.head_dim)  # (1, seqlen, n_heads, head_dim)
    k = attention.wk(x).view(1, seqlen, -1, attention.head_dim)  # (1, seqlen, n_kv_heads, head_dim)
    v = attention.wv(x).view(1, seqlen, -1, attention.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))  # (1, heads, seqlen, head_dim)
    n_rep = q.shape[1] // k.shape[1]
    scores = q @ repeat_kv(k, n_rep).transpose(-2, -1) / math.sqrt(attention.head_dim)  # (1, n_heads, s, s)
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool, device=x.device).tril()
    probs = F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    mixed = (probs @ repeat_kv(v, n_rep)).transpose(1, 2).reshape(1, seqlen, -1)  # (1, seqlen, n_heads * hd)
    out = attention.wo(mixed.to(dtype))[0].float()  # (seqlen, dim)
    return probs[0], out


def logit_lens(model: Transformer, residual: torch.Tensor) -> torch.Tensor:
    """Next-token probabilities (seqlen, vocab): the final norm and head applied to a residual stream (seqlen, dim)."""
    with torch.no_grad():
        logits = model.output(model.norm(residual[None].to(model.norm.weight.dtype)))[0].float()
    return logits.softmax(-1)


def rope_dot_by_distance(args: ModelArgs, distances: torch.Tensor) -> torch.Tensor:
    """q·k of q = k = all ones, q rotated to position d and k to 0, for each distance d: Σᵢ 2·cos(d·θᵢ), the curve
    of RoPE's long-term decay in the RoFormer paper."""
    q = k = torch.ones(args.head_dim)
    cos, sin = rope_tables(args.head_dim, int(distances.max()) + 1, args.rope_theta, args.rope_scaling)
    q_rot = apply_rope(q.expand(len(distances), -1)[:, None, None], cos[distances][:, None], sin[distances][:, None])
    k_rot = apply_rope(k[None, None, None], cos[:1][None], sin[:1][None])  # position 0
    return (q_rot.flatten(1) * k_rot.flatten()).sum(-1)  # (n,)


def kv_cost(model: Transformer, tokens: torch.Tensor, new_tokens: int) -> list[dict]:
    """Greedy decoding of new_tokens after the prompt: the bytes of the KV-cache positions filled after each step,
    measured on the cache and predicted by `analysis.kv_cache_bytes`, the step's time and its predicted FLOPs."""
    prompt_len = tokens.shape[1]
    total = min(prompt_len + new_tokens, model.args.max_seq_len)
    model.setup_cache(1, total)
    try:
        cache = model.kv_cache
        dtype = TORCH_DTYPE_NAMES.get(model.dtype, "fp32")  # the cache's by default (setup_cache)
        rows = []
        with torch.no_grad():
            logits = model(tokens, 0)
            for position in range(prompt_len, total):
                token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
                start = time.perf_counter()
                logits = model(token, position)
                seconds = time.perf_counter() - start
                filled = position + 1
                rows.append({"position": filled, "kv_bytes": cache.bytes_per_token() * filled,
                             "kv_bytes_predicted": kv_cache_bytes(model.args, 1, filled, dtype),
                             "decode_ms": seconds * 1000, "flops_predicted": decode_flops(model.args, filled).total})
    finally:
        model.clear_cache()
    return rows


@torch.no_grad()
def inspect_model(model: Transformer, tokens: list[int], top_k: int = 5, new_tokens: int = 32) -> Inspection:
    """Every number `llamalab inspect` shows for the prompt `tokens`, and the checks against the model's own pass."""
    ids = torch.tensor([tokens], device=model.device)
    with torch.no_grad():
        plain = model(ids).float()
    logits, rec = record(model, ids)
    checks = {"hooked_logits_max_abs_diff": float((logits.float() - plain).abs().max())}

    lens = [logit_lens(model, h) for h in rec.residual]  # per layer (seqlen, vocab)
    final = plain[0].softmax(-1)
    checks["last_lens_vs_output_max_abs_diff"] = float((lens[-1] - final).abs().max())
    chosen = final.argmax(-1)  # (seqlen,)
    lens_probs = torch.stack(lens)  # (n_layers, seqlen, vocab)
    top = lens_probs.topk(min(top_k, lens_probs.shape[-1]), dim=-1)

    cos, sin = rec.rope
    attention, deviation, row_sum, upper = [], 0.0, 0.0, 0.0
    for layer, x, out in zip(model.layers, rec.attention_input, rec.attention_output):
        probs, recomputed = attention_weights(layer.attention, x, cos, sin, model.dtype)
        scale = out.abs().max().clamp_min(1e-12)
        deviation = max(deviation, float((recomputed - out).abs().max() / scale))
        row_sum = max(row_sum, float((probs.sum(-1) - 1).abs().max()))
        upper = max(upper, float(probs.triu(1).abs().max()))
        attention.append(probs.cpu())
    checks.update({"attention_times_values_vs_fused_max_rel_diff": deviation,
                   "attention_row_sum_max_abs_diff": row_sum, "attention_above_diagonal_max": upper})
    entropy = torch.stack([-(p * p.clamp_min(1e-30).log()).sum(-1)[:, 1:].mean(-1) if p.shape[-1] > 1
                           else torch.zeros(p.shape[0]) for p in attention])  # (n_layers, n_heads)

    residual = torch.stack(rec.residual).cpu()  # (n_layers, seqlen, dim)
    cost = kv_cost(model, ids, new_tokens) if new_tokens > 0 else []
    if cost:
        checks["kv_bytes_vs_estimate_max_abs_diff"] = float(max(abs(c["kv_bytes"] - c["kv_bytes_predicted"])
                                                                for c in cost))
    args = model.args
    distances = torch.arange(0, min(args.max_seq_len, 4096))
    return Inspection(
        tokens=list(tokens), n_kv_heads=args.kv_heads,
        lens_top_ids=top.indices.cpu(), lens_top_probs=top.values.cpu(), chosen=chosen.cpu(),
        chosen_prob=lens_probs.gather(-1, chosen.expand(len(lens), -1)[..., None])[..., 0].cpu(),
        attention=attention, entropy=entropy,
        residual_rms=_rms(residual), attention_rms=_rms(torch.stack(rec.attention_output).cpu()),
        ffn_rms=_rms(torch.stack(rec.ffn_output).cpu()),
        channel_max=residual.abs().amax(1), outliers=_outliers(residual),
        rope_frequencies=rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling),
        rope_unscaled=rope_frequencies(args.head_dim, args.rope_theta) if args.rope_scaling else None,
        rope_distances=distances, rope_dot=rope_dot_by_distance(args, distances),
        cost=cost, checks=checks,
    )


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over positions and channels of each layer's (n_layers, seqlen, dim) stack."""
    return x.pow(2).mean((1, 2)).sqrt()


def _outliers(residual: torch.Tensor, n: int = 10) -> list[dict]:
    """The n channels of the residual stream (n_layers, seqlen, dim) with the largest |activation|, each with the
    layer and position of that activation."""
    n_layers, seqlen, dim = residual.shape
    per_channel = residual.abs().flatten(0, 1)  # (n_layers * seqlen, dim)
    peaks, where = per_channel.max(0)  # (dim,) each channel's largest |value| and the row it is in
    rows = []
    for channel in peaks.topk(min(n, dim)).indices.tolist():
        layer, position = divmod(int(where[channel]), seqlen)
        rows.append({"layer": layer, "position": position, "channel": channel,
                     "value": float(residual[layer, position, channel])})
    return rows
