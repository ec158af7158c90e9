"""The LLaMA decoder: token embedding, pre-norm blocks (RMSNorm → GQA attention, RMSNorm → SwiGLU), norm, head."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llamalab.config import ModelArgs
from llamalab.errors import ConfigError, ContextLengthError
from llamalab.model.attention import ATTENTION_IMPLS, Attention, KVCache
from llamalab.model.feed_forward import FeedForward
from llamalab.model.head_loss import IGNORE_INDEX, head_cross_entropy
from llamalab.model.norm import RMSNorm
from llamalab.model.rope import rope_tables


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs, attention_impl: str = "sdpa"):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args, attention_impl)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim, args.dropout)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, cos, sin, start_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, start_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


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
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_rope()
        self.init_weights()

    # -- set-up ---------------------------------------------------------------------------------
    def init_rope(self, device=None) -> None:
        """(Re)compute the RoPE cos/sin tables, e.g. after a meta-device model got real weights."""
        device = device if device is not None else self.tok_embeddings.weight.device
        a = self.args
        self.rope_cos, self.rope_sin = rope_tables(a.head_dim, a.max_seq_len, a.rope_theta, a.rope_scaling, device)

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .to_empty(device) must not leave the RoPE tables in low precision or uninitialised
        super()._apply(fn, recurse)
        self.init_rope()
        return self

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

    def setup_cache(self, batch_size: int | None = None, max_seq_len: int | None = None, device=None, dtype=None):
        """Allocate every layer's KV cache (default: the args' sizes, the weights' device and dtype)."""
        batch_size = batch_size or self.args.max_batch_size
        max_seq_len = max_seq_len or self.args.max_seq_len
        if max_seq_len > self.args.max_seq_len:
            raise ContextLengthError(
                f"KV cache of {max_seq_len} positions exceeds the model's max_seq_len={self.args.max_seq_len}; "
                "ask for fewer positions or build the model with a larger max_seq_len"
            )
        weight = self.tok_embeddings.weight
        device = device if device is not None else weight.device
        dtype = dtype if dtype is not None else weight.dtype
        for layer in self.layers:
            attn = layer.attention
            attn.cache = KVCache(batch_size, max_seq_len, attn.n_kv_heads, attn.head_dim, device, dtype)

    def clear_cache(self) -> None:
        """Free the KV caches."""
        for layer in self.layers:
            layer.attention.cache = None

    @property
    def cache_shape(self) -> tuple[int, int] | None:
        """(batch_size, max_seq_len) of the KV cache, or None when none is set up."""
        cache = self.layers[0].attention.cache if len(self.layers) else None
        return None if cache is None else (cache.k.shape[0], cache.k.shape[2])

    # -- forward passes -------------------------------------------------------------------------
    def forward(
        self, tokens: torch.Tensor, start_pos: int | torch.Tensor = 0, last_only: bool = False,
        targets: torch.Tensor | None = None,
    ):
        """Logits (bsz, seqlen or 1, vocab) in float32 for tokens (bsz, seqlen) placed at `start_pos`.

        With a KV cache (see `setup_cache`) the keys and values are written at the positions and the
        tokens attend to everything before them: prefill a prompt, then decode one token at a time.
        `start_pos` is an int shared by every row, or a (bsz,) tensor giving each row its own start.
        Without a cache, `start_pos` must be 0 and the pass is plain causal attention.
        With `targets` (bsz, seqlen) it returns their mean cross-entropy instead (-100 is skipped), computed
        by `head_cross_entropy` without the logits tensor: how training calls the model.
        """
        bsz, seqlen = tokens.shape
        cache = self.cache_shape
        if cache is None:
            if not (isinstance(start_pos, int) and start_pos == 0):
                raise ContextLengthError("start_pos > 0 needs a KV cache: call model.setup_cache(...) first")
            if seqlen > self.args.max_seq_len:
                raise ContextLengthError(
                    f"sequence of {seqlen} tokens exceeds max_seq_len={self.args.max_seq_len}; shorten it"
                )
            h = self._hidden(tokens, self.rope_cos[None, :seqlen], self.rope_sin[None, :seqlen], None, None)
        else:
            cache_batch, cache_len = cache
            if bsz > cache_batch:
                raise ContextLengthError(f"batch of {bsz} exceeds the KV cache's batch size {cache_batch}")
            if isinstance(start_pos, int):
                if start_pos < 0 or start_pos + seqlen > cache_len:
                    raise ContextLengthError(
                        f"positions {start_pos}..{start_pos + seqlen - 1} do not fit the KV cache of {cache_len} "
                        "positions; shorten the prompt or the generation, or set up a longer cache"
                    )
                positions = torch.arange(start_pos, start_pos + seqlen, device=tokens.device)[None]  # (1, seqlen)
                mask = None  # one new token sees the whole filled cache; a chunk from 0 is plain causal
                if seqlen > 1 and start_pos > 0:
                    mask = _visible(torch.arange(start_pos + seqlen, device=tokens.device), positions)
            else:
                positions = start_pos.view(bsz, 1) + torch.arange(seqlen, device=tokens.device)  # (bsz, seqlen)
                mask = _visible(torch.arange(cache_len, device=tokens.device), positions)
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (1 or bsz, seqlen, head_dim/2)
            h = self._hidden(tokens, cos, sin, start_pos if isinstance(start_pos, int) else positions, mask)
        if targets is not None:
            return self._cross_entropy(h, targets)
        if last_only:
            h = h[:, -1:]
        return self.output(h).float()

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a causal pass over tokens (bsz, seqlen); targets equal -100 are skipped."""
        return self(tokens, targets=targets)

    def _cross_entropy(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """h (bsz, seqlen, dim), targets (bsz, seqlen). A head that is not a plain nn.Linear holding a plain tensor
        (LoRA, quantized, a DTensor split by tensor parallelism) computes its logits itself."""
        if type(self.output) is nn.Linear and type(self.output.weight) in (torch.Tensor, nn.Parameter):
            return head_cross_entropy(h.flatten(0, 1), self.output.weight, targets.flatten())
        logits = self.output(h).float()  # (bsz, seqlen, vocab)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def _hidden(self, tokens, cos, sin, start_pos, mask):
        h = self.dropout(self.tok_embeddings(tokens))  # (bsz, seqlen, dim)
        for layer in self.layers:
            h = layer(h, cos, sin, start_pos, mask)
        return self.norm(h)


def _visible(key_positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """Causal mask (bsz or 1, 1, seqlen, kv_len): a query sees the keys at its position and before."""
    return (key_positions[None, None, :] <= query_positions[:, :, None]).unsqueeze(1)
