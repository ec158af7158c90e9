"""The LLaMA 2 / LLaMA 3 model: plain nn.Modules, buildable on the meta device."""
from llamalab.model.attention import Attention, KVCache, reference_attention, repeat_kv, sdpa_attention
from llamalab.model.feed_forward import FeedForward
from llamalab.model.norm import RMSNorm
from llamalab.model.rope import apply_rope, rope_frequencies, rope_tables
from llamalab.model.transformer import Transformer, TransformerBlock

__all__ = [
    "Attention", "FeedForward", "KVCache", "RMSNorm", "Transformer", "TransformerBlock",
    "apply_rope", "reference_attention", "repeat_kv", "rope_frequencies", "rope_tables", "sdpa_attention",
]
