"""The LLaMA 2 / LLaMA 3 decoder, top to bottom: RMSNorm, RoPE, attention, SwiGLU, the block, the Transformer.

Plain nn.Modules with no parallel or quantization code (both are applied from outside), buildable on
the meta device. Where the tokens of a pass sit (positions, mask, KV-cache rows) is decided once per
pass by `Transformer.place`; the layers only follow the `Placement` it returns.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llamalab.config import ModelArgs, RopeScaling
from llamalab.errors import ConfigError, ContextLengthError
from llamalab.model.head_loss import IGNORE_INDEX, head_cross_entropy
from llamalab.model.kv_cache import KVCache, LayerCache, PagedKVCache, PagedLayerCache, Placement


# -- RMSNorm ---------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Scale by the reciprocal root-mean-square of the features (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed in float32 for stability, then cast back to the input dtype
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


# -- RoPE: each pair (x[2i], x[2i+1]) of a head rotated by position * theta^(-2i/head_dim) ----------------
def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """The head_dim/2 rotation frequencies theta^(-2i/head_dim), Llama-3.1-scaled when asked."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is not None:
        freqs = llama31_scale_frequencies(freqs, scaling)
    return freqs.float()


def llama31_scale_frequencies(freqs: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1: slow (long-wavelength) frequencies divided by `factor`, fast ones kept, smooth between."""
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * freqs / s.factor + smooth * freqs
    return torch.where(
        wavelen < high_freq_wavelen, freqs, torch.where(wavelen > low_freq_wavelen, freqs / s.factor, blended)
    )


def rope_tables(
    head_dim: int, max_seq_len: int, theta: float, scaling: RopeScaling | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precomputed cos and sin of every (position, frequency) angle, each (max_seq_len, head_dim/2) float32."""
    freqs = rope_frequencies(head_dim, theta, scaling).to(device)
    positions = torch.arange(max_seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, freqs)  # (max_seq_len, head_dim/2)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (bsz, seqlen, n_heads, head_dim) by cos/sin (bsz or 1, seqlen, head_dim/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (bsz, seqlen, n_heads, head_dim/2, 2)
    x_even, x_odd = xf[..., 0], xf[..., 1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (bsz, seqlen, 1, head_dim/2)
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)  # (bsz, seqlen, n_heads, head_dim)


# -- attention: softmax(q kᵀ / √d + mask) v, with grouped-query heads ----------------------------------------
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Share each key/value head with n_rep consecutive query heads: (b, n_kv, s, hd) -> (b, n_kv*n_rep, s, hd)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def reference_attention(q, k, v, mask=None, causal=False, dropout_p=0.0):
    """softmax(q kᵀ / √d + mask) v, written out. q (b, h, s, d); k, v (b, h_kv, t, d); mask bool (., ., s, t)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (b, h, t, d)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (b, h, s, t)
    if causal:
        s, t = scores.shape[-2:]
        mask = torch.ones(s, t, dtype=torch.bool, device=q.device).tril(diagonal=t - s)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(F.softmax(scores, dim=-1), p=dropout_p)
    return (probs @ v.float()).type_as(q)  # (b, h, s, d)


def sdpa_attention(q, k, v, mask=None, causal=False, dropout_p=0.0):
    """The same as `reference_attention`, through PyTorch's fused kernels (flash / memory-efficient / math)."""
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p, enable_gqa=gqa
    )


ATTENTION_IMPLS = {"sdpa": sdpa_attention, "reference": reference_attention}
ROPE_POSITIONS = 4096  # positions the RoPE tables cover up front; they grow to what a cache or a pass needs


class Attention(nn.Module):
    """Causal self-attention with n_heads query heads sharing n_kv_heads key/value heads, RoPE, a KV cache."""

    def __init__(self, args: ModelArgs, impl: str = "sdpa"):
        super().__init__()
        self.head_dim = args.head_dim
        self.n_kv_heads = args.kv_heads  # key/value heads this module computes (and caches); fewer under TP
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.dropout_p = args.dropout
        self.resid_dropout = nn.Dropout(args.dropout)
        self.attend = ATTENTION_IMPLS[impl]
        self.cache: LayerCache | PagedLayerCache | None = None

    def forward(self, x, cos, sin, where: Placement | None = None):
        """x (bsz, seqlen, dim) at the angles cos/sin; `where` None is plain causal attention (no cache)."""
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, -1, self.head_dim)  # (bsz, seqlen, n_heads, head_dim)
        k = self.wk(x).view(bsz, seqlen, -1, self.head_dim)  # (bsz, seqlen, n_kv_heads, head_dim)
        v = self.wv(x).view(bsz, seqlen, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if where is not None and where.segments is not None:  # packed parts (forward_packed): attention per part
            out = torch.cat([self._attend_part(q, k, v, *segment) for segment in where.segments], dim=1)
            return self.resid_dropout(self.wo(out))  # (1, T, dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (bsz, heads, seqlen, head_dim)
        mask, causal = None, True
        if where is not None:
            mask, causal = where.mask, where.causal
            if where.kv_len is not None:
                k, v = self.cache.update(k, v, where)  # (bsz, n_kv_heads, kv_len, head_dim)
        dropout_p = self.dropout_p if self.training else 0.0
        out = self.attend(q, k, v, mask=mask, causal=causal, dropout_p=dropout_p)  # (bsz, n_heads, seqlen, hd)
        out = out.transpose(1, 2).reshape(bsz, seqlen, -1)  # (bsz, seqlen, n_heads * head_dim)
        return self.resid_dropout(self.wo(out))

    def _attend_part(self, q, k, v, begin: int, end: int, shape: tuple[int, int], where: Placement) -> torch.Tensor:
        """Attention of the packed tokens begin..end-1 of q, k, v (1, T, heads, head_dim), which are a (b, s) batch
        placed `where` in the cache; (1, b * s, n_heads * head_dim)."""
        b, s = shape
        q, k, v = (t[:, begin:end].reshape(b, s, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (b, h, s, hd)
        k, v = self.cache.update(k, v, where)  # (b, n_kv_heads, kv_len, head_dim)
        out = self.attend(q, k, v, mask=where.mask, causal=where.causal)  # (b, n_heads, s, head_dim)
        return out.transpose(1, 2).reshape(1, b * s, -1)


# -- SwiGLU feed-forward ---------------------------------------------------------------------------------
class FeedForward(nn.Module):
    """w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down (residual projection)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


# -- the pre-norm block ------------------------------------------------------------------------------------
class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs, attention_impl: str = "sdpa"):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args, attention_impl)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim, args.dropout)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, cos, sin, where: Placement | None = None):
        h = x + self.attention(self.attention_norm(x), cos, sin, where)
        return h + self.feed_forward(self.ffn_norm(h))


# -- the Transformer -----------------------------------------------------------------------------------------
class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, attention_impl: str = "sdpa"):
        super().__init__()
        if attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention_impl must be one of {sorted(ATTENTION_IMPLS)}, got {attention_impl!r}")
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.dropout = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(TransformerBlock(i, args, attention_impl) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self._kv_cache: KVCache | PagedKVCache | None = None
        self.init_rope()
        self.init_weights()

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the weights (and, by default, of the KV cache)."""
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype, the KV cache's by default: the first floating-point parameter's (an embedding may
        hold quantized codes)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def init_rope(self, device=None, positions: int | None = None) -> None:
        """Compute the float32 RoPE cos/sin tables on `device` (default: the weights'): call it after a meta-device
        model got real weights. Plain attributes, not buffers, so that `.to(dtype)` leaves them in float32.
        They cover `positions` (default: max_seq_len, at most ROPE_POSITIONS) and grow when a pass needs more."""
        a = self.args
        device = device if device is not None else self.device
        positions = positions or min(a.max_seq_len, ROPE_POSITIONS)
        if torch.device(device).type == "meta":  # shapes only: arithmetic on meta tensors imports dynamo (~1 s)
            self.rope_cos = self.rope_sin = torch.empty(positions, a.head_dim // 2, device="meta")
            return
        self.rope_cos, self.rope_sin = rope_tables(a.head_dim, positions, a.rope_theta, a.rope_scaling, device)

    def set_attention(self, impl: str) -> None:
        """Compute every layer's attention with `impl`: "sdpa" (PyTorch's fused kernels) or "reference"."""
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention_impl must be one of {sorted(ATTENTION_IMPLS)}, got {impl!r}")
        for layer in self.layers:
            layer.attention.attend = ATTENTION_IMPLS[impl]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Training-from-scratch init: N(0, 0.02) everywhere, residual projections (wo, w2) by 1/√(2·n_layers)."""
        residual_std = 0.02 / math.sqrt(2 * self.args.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("attention.wo", "feed_forward.w2")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()

    def setup_cache(self, batch_size: int | None = None, max_seq_len: int | None = None, device=None,
                    dtype=None) -> KVCache:
        """Allocate every layer's KV cache (default: the args' sizes, the weights' device and dtype)."""
        batch_size = batch_size or self.args.max_batch_size
        max_seq_len = max_seq_len or self.args.max_seq_len
        if max_seq_len > self.args.max_seq_len:
            raise ContextLengthError(
                f"KV cache of {max_seq_len} positions exceeds the model's max_seq_len={self.args.max_seq_len}; "
                "ask for fewer positions or build the model with a larger max_seq_len"
            )
        device = device if device is not None else self.device
        dtype = dtype if dtype is not None else self.dtype
        for layer in self.layers:
            attn = layer.attention
            attn.cache = LayerCache(batch_size, max_seq_len, attn.n_kv_heads, attn.head_dim, device, dtype)
        self._kv_cache = KVCache([layer.attention.cache for layer in self.layers])
        return self._kv_cache

    def kv_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """Bytes one cached position takes over every layer (keys and values) at `dtype` (default: the model's)."""
        size = torch.empty(0, dtype=dtype or self.dtype).element_size()
        return sum(2 * layer.attention.n_kv_heads * layer.attention.head_dim * size for layer in self.layers)

    def setup_paged_cache(self, num_blocks: int, block_size: int = 16, batch_size: int | None = None,
                          max_seq_len: int | None = None, device=None, dtype=None,
                          prefix_caching: bool = False) -> PagedKVCache:
        """Allocate a paged KV cache: `num_blocks` blocks of `block_size` positions for up to `batch_size` rows
        (with `prefix_caching`, prompt blocks shared by content across rows)."""
        batch_size = batch_size or self.args.max_batch_size
        max_seq_len = max_seq_len or self.args.max_seq_len
        if max_seq_len > self.args.max_seq_len or num_blocks < 1 or block_size < 1:
            raise ContextLengthError(
                f"a paged KV cache needs num_blocks >= 1, block_size >= 1 and max_seq_len <= {self.args.max_seq_len}; "
                f"got {num_blocks}, {block_size}, {max_seq_len}")
        device = device if device is not None else self.device
        dtype = dtype if dtype is not None else self.dtype
        for layer in self.layers:
            attn = layer.attention
            attn.cache = PagedLayerCache(num_blocks + 1, block_size, attn.n_kv_heads, attn.head_dim, device, dtype)
        self._kv_cache = PagedKVCache([layer.attention.cache for layer in self.layers], batch_size, max_seq_len,
                                      prefix_caching)
        return self._kv_cache

    def clear_cache(self) -> None:
        """Free the KV caches."""
        for layer in self.layers:
            layer.attention.cache = None
        self._kv_cache = None

    @property
    def kv_cache(self) -> KVCache | PagedKVCache | None:
        """The KV cache set up by `setup_cache` or `setup_paged_cache`, or None."""
        return self._kv_cache

    @property
    def cache_shape(self) -> tuple[int, int] | None:
        """(batch_size, max_seq_len) of the KV cache, or None when none is set up."""
        cache = self.kv_cache
        return None if cache is None else (cache.batch_size, cache.max_seq_len)

    # -- forward passes -------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, start_pos: int | torch.Tensor = 0, *, first_row: int = 0,
                kv_len: int | None = None, last_only: bool = False, targets: torch.Tensor | None = None):
        """Logits (bsz, seqlen or 1, vocab) in float32 of tokens (bsz, seqlen) placed at `start_pos` (see `place`).

        With `targets` (bsz, seqlen) it returns their mean cross-entropy instead (-100 is skipped), computed
        by `head_cross_entropy` without the logits tensor: how training calls the model.
        """
        where = self.place(tokens, start_pos, first_row, kv_len)
        h = self.hidden(tokens, where)  # (bsz, seqlen, dim)
        if targets is not None:
            return self._cross_entropy(h, targets)
        if last_only and h.shape[1] > 1:  # plain strides: a (bsz, 1, dim) view strided (seqlen * dim, dim, 1) takes
            h = h[:, -1:].clone(memory_format=torch.contiguous_format)  # CPU bf16 linear to a bmm copying the weight
        return self.output(h).float()

    def forward_packed(self, parts: list[tuple[torch.Tensor, int | torch.Tensor, int, int | None]]) -> torch.Tensor:
        """Several cache writes in one forward pass: parts (tokens (b, s), start_pos, first_row, kv_len), each placed
        as `place` places it. The projections and feed-forwards run once over all their tokens; attention runs part
        by part, in order, so a part sees what the parts before it wrote (a prompt chunk, then decode rows that
        include that prompt's next token). Logits (rows, vocab) of each part's rows' last positions, part by part."""
        wheres = [self.place(tokens, start, row, kv_len) for tokens, start, row, kv_len in parts]
        segments, begin = [], 0
        for (tokens, *_), where in zip(parts, wheres):
            segments.append((begin, begin + tokens.numel(), tuple(tokens.shape), where))
            begin += tokens.numel()
        positions = torch.cat([w.positions.expand(t.shape).reshape(1, -1) for (t, *_), w in zip(parts, wheres)], 1)
        packed = torch.cat([tokens.reshape(1, -1) for tokens, *_ in parts], dim=1)  # (1, T)
        h = self.hidden(packed, Placement(positions, None, segments=segments))  # (1, T, dim)
        last = torch.cat([h[0, first:end].view(*shape, -1)[:, -1] for first, end, shape, _ in segments])  # (rows, dim)
        return self.output(last).float()  # (rows, vocab)

    def place(self, tokens: torch.Tensor, start_pos: int | torch.Tensor = 0, first_row: int = 0,
              kv_len: int | None = None) -> Placement:
        """Where tokens (bsz, seqlen) go and what they see.

        Without a KV cache: positions 0..seqlen-1, plain causal attention. With one (see `setup_cache`):
        batch row i is cache row first_row + i; `start_pos` is an int shared by every row (a prompt, or a
        token of rows in step), or a (bsz,) tensor giving each row its own start, in which case attention
        reads the first `kv_len` positions (default: all) under a mask of what each row has written.
        """
        bsz, seqlen = tokens.shape
        device = tokens.device
        cache = self.kv_cache
        if cache is None:
            if not (isinstance(start_pos, int) and start_pos == 0):
                raise ContextLengthError("start_pos > 0 needs a KV cache: call model.setup_cache(...) first")
            if seqlen > self.args.max_seq_len:
                raise ContextLengthError(
                    f"sequence of {seqlen} tokens exceeds max_seq_len={self.args.max_seq_len}; shorten it"
                )
            self._cover_rope(seqlen)
            return Placement(torch.arange(seqlen, device=device)[None])
        rows, length = cache.batch_size, cache.max_seq_len
        self._cover_rope(length)
        if first_row + bsz > rows:
            raise ContextLengthError(f"rows {first_row}..{first_row + bsz - 1} exceed the KV cache's {rows} rows")
        table = None if cache.block_table is None else cache.block_table[first_row : first_row + bsz]
        if isinstance(start_pos, int):
            end = start_pos + seqlen
            if start_pos < 0 or end > length:
                raise ContextLengthError(
                    f"positions {start_pos}..{end - 1} do not fit the KV cache of {length} positions; "
                    "shorten the prompt or the generation, or set up a longer cache"
                )
            positions = torch.arange(start_pos, end, device=device)[None]  # (1, seqlen)
            # one new token sees the whole filled cache; a chunk from 0 is plain causal; a later chunk needs a mask
            mask = _visible(torch.arange(end, device=device), positions) if seqlen > 1 and start_pos > 0 else None
            return Placement(positions, start_pos, first_row, end, mask, seqlen > 1 and start_pos == 0, table)
        kv_len = kv_len or length
        positions = start_pos.view(bsz, 1) + torch.arange(seqlen, device=device)  # (bsz, seqlen)
        mask = _visible(torch.arange(kv_len, device=device), positions)
        return Placement(positions, None, first_row, kv_len, mask, False, table)

    def hidden(self, tokens: torch.Tensor, where: Placement) -> torch.Tensor:
        """The final-norm hidden states (bsz, seqlen, dim) of tokens placed `where`."""
        cos, sin = self._rope(where.positions)  # (1 or bsz, seqlen, head_dim/2)
        h = self.dropout(self.tok_embeddings(tokens))  # (bsz, seqlen, dim)
        for layer in self.layers:
            h = layer(h, cos, sin, where)
        return self.norm(h)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a causal pass over tokens (bsz, seqlen); targets equal -100 are skipped."""
        return self(tokens, targets=targets)

    def _cover_rope(self, positions: int) -> None:
        """Grow the RoPE tables to at least `positions` rows (they start at ROPE_POSITIONS)."""
        if self.rope_cos.shape[0] < positions:
            self.init_rope(self.rope_cos.device if not self.rope_cos.is_meta else None, positions)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The RoPE angles of positions (1 or bsz, seqlen); the tables follow the model to another device."""
        if self.rope_cos.device != positions.device:
            if self.rope_cos.is_meta:
                raise ConfigError("the RoPE tables are on the meta device: call model.init_rope() after loading")
            self.rope_cos, self.rope_sin = self.rope_cos.to(positions.device), self.rope_sin.to(positions.device)
        return self.rope_cos[positions], self.rope_sin[positions]

    def _cross_entropy(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """h (bsz, seqlen, dim), targets (bsz, seqlen). A head that is not a plain nn.Linear holding a plain tensor
        (LoRA, quantized, a DTensor split by tensor parallelism) computes its logits itself."""
        if type(self.output) is nn.Linear and type(self.output.weight) in (torch.Tensor, nn.Parameter):
            return head_cross_entropy(h.flatten(0, 1), self.output.weight, targets.flatten())
        logits = self.output(h).float()  # (bsz, seqlen, vocab)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def _visible(key_positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """Causal mask (bsz or 1, 1, seqlen, kv_len): a query sees the keys at its position and before."""
    return (key_positions[None, None, :] <= query_positions[:, :, None]).unsqueeze(1)
