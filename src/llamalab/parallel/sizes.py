"""Which tensor-parallel sizes split a model: checked from its ModelArgs alone, before any weight exists."""
from __future__ import annotations

from llamalab.config import ModelArgs
from llamalab.errors import ConfigError


def check_tp_size(args: ModelArgs, tp: int, training: bool = False) -> None:
    """Raise ConfigError unless the model splits evenly over tp ranks; call it before loading any weight."""
    if not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"the tensor-parallel size must be a positive integer, got {tp!r}")
    sizes = {"n_heads": args.n_heads, "dim": args.dim, "ffn_hidden_dim": args.ffn_hidden_dim,
             "vocab_size": args.vocab_size}
    for name, size in sizes.items():
        if size % tp:
            raise ConfigError(f"tensor-parallel size {tp} does not divide {name}={size}; choose a --tp that divides it")
    kv = args.kv_heads
    if kv % tp == 0:
        return
    if tp % kv:
        raise ConfigError(f"tensor-parallel size {tp} and n_kv_heads={kv} do not divide one another; "
                          "choose a --tp that divides n_kv_heads or is a multiple of it")
    if training:
        raise ConfigError(f"n_kv_heads={kv} is smaller than --tp {tp}: key/value heads are replicated for "
                          f"inference only; for training use --tp {kv} or less (add --dp-shard for the rest)")
