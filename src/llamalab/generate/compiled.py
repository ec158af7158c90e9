"""The decode step compiled with torch.compile, returned to the caller (nothing is rebound globally).

Shapes are kept static so that one compilation serves every step of a batch size: positions are
always a (bsz,) tensor and attention runs over the whole KV cache under a mask. On CUDA the
"reduce-overhead" mode captures the step in a CUDA graph.
"""
from __future__ import annotations

import torch

from llamalab.generate.decode import Step


def compile_decode_step(model: torch.nn.Module, mode: str | None = None, backend: str = "inductor") -> Step:
    """A compiled (tokens (bsz, 1), start_pos) -> logits (bsz, vocab) step; mode None picks per device."""
    device = model.tok_embeddings.weight.device
    graphs = backend == "inductor" and device.type == "cuda" and mode in (None, "reduce-overhead", "max-autotune")
    mode = mode or ("reduce-overhead" if graphs else None)
    compiled = torch.compile(_next_token_logits, mode=mode, backend=backend, fullgraph=True, dynamic=False)

    def step(tokens: torch.Tensor, start_pos: int | torch.Tensor) -> torch.Tensor:
        if isinstance(start_pos, int):
            start_pos = torch.full((tokens.shape[0],), start_pos, device=tokens.device)
        if not graphs:
            return compiled(model, tokens, start_pos)
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(model, tokens, start_pos).clone()  # the graph's output buffer is reused by the next replay

    return step


def _next_token_logits(model: torch.nn.Module, tokens: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
    return model(tokens, start_pos, last_only=True)[:, -1]
