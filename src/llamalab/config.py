"""ModelArgs: the hyper-parameters of a LLaMA 2 / LLaMA 3 model, their validation and named presets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from llamalab.errors import ConfigError


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 RoPE frequency scaling (long-context extension of the rotary frequencies)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            _require_number(f"rope_scaling.{name}", getattr(self, name))
        _require_int("rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings)
        if self.factor <= 0 or self.low_freq_factor <= 0 or self.high_freq_factor <= 0:
            raise ConfigError(f"rope_scaling factors must be positive, got {self}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"rope_scaling.high_freq_factor ({self.high_freq_factor}) must exceed "
                f"low_freq_factor ({self.low_freq_factor})"
            )
        if self.original_max_position_embeddings <= 0:
            raise ConfigError("rope_scaling.original_max_position_embeddings must be positive")


@dataclass
class ModelArgs:
    """Sizes of a LLaMA model; the defaults are Llama 2 7B."""

    dim: int = 4096  # width of the residual stream
    n_layers: int = 32  # number of transformer blocks
    n_heads: int = 32  # query heads
    n_kv_heads: int | None = None  # key/value heads (None = n_heads; fewer = GQA, 1 = MQA)
    vocab_size: int = 32000
    hidden_dim: int | None = None  # SwiGLU hidden size (None = derived by the multiple_of rule)
    multiple_of: int = 256  # the derived hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None  # scales the derived hidden size (Llama 2 70B, Llama 3)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # Llama 3.1 frequency scaling
    max_seq_len: int = 2048  # longest sequence the RoPE tables and the KV cache cover
    max_batch_size: int = 32  # default batch size of the KV cache
    dropout: float = 0.0  # dropout on embeddings, attention and residual branches (training only)
    tie_embeddings: bool = False  # output head shares the token-embedding matrix

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):
            known = {f.name for f in dataclasses.fields(RopeScaling)}
            if unknown := sorted(set(self.rope_scaling) - known):
                raise ConfigError(f"unknown rope_scaling field(s) {unknown}; known fields: {sorted(known)}")
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"ModelArgs.rope_scaling must be a mapping of Llama 3.1 scaling fields or None, "
                              f"got {self.rope_scaling!r}")
        self.validate()

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads with the None default resolved."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU hidden size: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the field and the fix when the sizes cannot form a model."""
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len", "max_batch_size"):
            _require_int(f"ModelArgs.{name}", getattr(self, name))
        floats = ("norm_eps", "rope_theta", "dropout") + (("ffn_dim_multiplier",) if self.ffn_dim_multiplier else ())
        for name in floats:
            _require_number(f"ModelArgs.{name}", getattr(self, name))
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"ModelArgs.tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        for name in ("n_kv_heads", "hidden_dim"):  # None: derived
            if getattr(self, name) is not None:
                _require_int(f"ModelArgs.{name}", getattr(self, name))
        if self.dim % self.n_heads != 0:
            raise ConfigError(
                f"ModelArgs.dim={self.dim} is not divisible by n_heads={self.n_heads} "
                f"(head_dim would be {self.dim / self.n_heads:g}); choose n_heads that divides dim"
            )
        if self.head_dim % 2 != 0:
            raise ConfigError(
                f"head_dim = dim/n_heads = {self.head_dim} must be even for rotary embeddings; "
                f"change dim={self.dim} or n_heads={self.n_heads}"
            )
        if self.n_heads % self.kv_heads != 0:
            raise ConfigError(
                f"ModelArgs.n_heads={self.n_heads} must be a multiple of n_kv_heads={self.kv_heads} "
                "(each key/value head serves a whole group of query heads)"
            )
        if self.ffn_dim_multiplier is not None and self.ffn_dim_multiplier <= 0:
            raise ConfigError(f"ModelArgs.ffn_dim_multiplier must be positive, got {self.ffn_dim_multiplier}")
        if self.ffn_hidden_dim <= 0:
            raise ConfigError(f"the FFN hidden size is {self.ffn_hidden_dim} (dim={self.dim}, ffn_dim_multiplier="
                              f"{self.ffn_dim_multiplier}); raise ffn_dim_multiplier or set hidden_dim")
        if not self.norm_eps > 0:
            raise ConfigError(f"ModelArgs.norm_eps must be positive, got {self.norm_eps}")
        if not self.rope_theta > 0:
            raise ConfigError(f"ModelArgs.rope_theta must be positive, got {self.rope_theta}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ModelArgs.dropout must be in [0, 1), got {self.dropout}")

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelArgs:
        """Build from a dict of field values; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown ModelArgs field(s) {unknown}; known fields: {sorted(names)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelArgs:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelArgs:
        """A named configuration (see `PRESETS`), optionally with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


def _require_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _require_number(name: str, value: Any) -> None:
    """A finite real number (ints welcome; strings, booleans, NaN and infinity are not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


_LLAMA31_SCALING = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
_LLAMA32_SCALING = dict(_LLAMA31_SCALING, factor=32.0)
_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, n_kv_heads=8, max_seq_len=8192)

# Published shapes. llama2.c's "stories" models tie the classifier to the embedding.
PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_seq_len=128),
    "stories260K": dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, multiple_of=4,
                        max_seq_len=512, tie_embeddings=True),
    "stories15M": dict(dim=288, n_layers=6, n_heads=6, vocab_size=32000, multiple_of=32, max_seq_len=256,
                       tie_embeddings=True),
    "stories42M": dict(dim=512, n_layers=8, n_heads=8, vocab_size=32000, multiple_of=32, max_seq_len=1024,
                       tie_embeddings=True),
    "stories110M": dict(dim=768, n_layers=12, n_heads=12, vocab_size=32000, multiple_of=32, max_seq_len=1024,
                        tie_embeddings=True),
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, max_seq_len=4096),
    "llama2-13b": dict(dim=5120, n_layers=40, n_heads=40, max_seq_len=4096),
    "llama2-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                       ffn_dim_multiplier=1.3, max_seq_len=4096),
    "llama3-8b": dict(_LLAMA3, dim=4096, n_layers=32, n_heads=32, multiple_of=1024, ffn_dim_multiplier=1.3),
    "llama3-70b": dict(_LLAMA3, dim=8192, n_layers=80, n_heads=64, multiple_of=4096, ffn_dim_multiplier=1.3),
    "llama3.1-8b": dict(_LLAMA3, dim=4096, n_layers=32, n_heads=32, multiple_of=1024, ffn_dim_multiplier=1.3,
                        max_seq_len=131072, rope_scaling=_LLAMA31_SCALING),
    "llama3.1-70b": dict(_LLAMA3, dim=8192, n_layers=80, n_heads=64, multiple_of=4096, ffn_dim_multiplier=1.3,
                         max_seq_len=131072, rope_scaling=_LLAMA31_SCALING),
    "llama3.1-405b": dict(_LLAMA3, dim=16384, n_layers=126, n_heads=128, multiple_of=4096,
                          ffn_dim_multiplier=1.2, max_seq_len=131072, rope_scaling=_LLAMA31_SCALING),
    "llama3.2-1b": dict(_LLAMA3, dim=2048, n_layers=16, n_heads=32, multiple_of=256, ffn_dim_multiplier=1.5,
                        max_seq_len=131072, rope_scaling=_LLAMA32_SCALING, tie_embeddings=True),
    "llama3.2-3b": dict(_LLAMA3, dim=3072, n_layers=28, n_heads=24, multiple_of=256, ffn_dim_multiplier=1.0,
                        max_seq_len=131072, rope_scaling=_LLAMA32_SCALING, tie_embeddings=True),
    "tinyllama-1.1b": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000, hidden_dim=5632,
                           max_seq_len=2048),
}
