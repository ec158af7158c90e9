"""The LLaMA 2 / LLaMA 3 model: plain nn.Modules, buildable on the meta device, and its KV cache."""
from llamalab.model.kv_cache import KVCache, LayerCache, PagedKVCache, PagedLayerCache, Placement
from llamalab.model.model import (
    Attention,
    FeedForward,
    RMSNorm,
    Transformer,
    TransformerBlock,
    apply_rope,
    reference_attention,
    repeat_kv,
    rope_frequencies,
    rope_tables,
    sdpa_attention,
)

__all__ = [
    "Attention", "FeedForward", "KVCache", "LayerCache", "PagedKVCache", "PagedLayerCache", "Placement", "RMSNorm",
    "Transformer", "TransformerBlock",
    "apply_rope", "reference_attention", "repeat_kv", "rope_frequencies", "rope_tables", "sdpa_attention",
]
