"""The decode step compiled with torch.compile, returned to the caller (nothing is rebound globally).

Shapes are kept static so that one compilation serves every step of a batch size: positions are
always a (bsz,) tensor and attention runs over the whole KV cache under a mask. On CUDA the step is
captured in a CUDA graph, and inductor's coordinate-descent tuning turns each batch-1 matrix-vector
product into a tuned reduction that also fuses the int8 dequantization (gpt-fast's recipe).
"""
from __future__ import annotations

import types

import torch

from llamalab.generate.engine import Step

# inductor options of the CUDA step: "reduce-overhead" (CUDA graphs) plus tuned matrix-vector reductions
CUDA_OPTIONS = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}


def compile_decode_step(
    model: torch.nn.Module, mode: str | None = None, backend: str = "inductor", options: dict | None = None
) -> Step:
    """A compiled (tokens (bsz, 1), start_pos, kv_len) -> logits (bsz, vocab) step; it reads the whole KV cache
    (static shapes), so it ignores kv_len.

    With neither `mode` nor `options` given, inductor on CUDA gets `CUDA_OPTIONS`, elsewhere its defaults.
    """
    device = model.device
    inductor_on_cuda = backend == "inductor" and device.type == "cuda"
    if mode is None and options is None and inductor_on_cuda:
        options = CUDA_OPTIONS
    graphs = inductor_on_cuda and (mode in ("reduce-overhead", "max-autotune")
                                   or bool(options and options.get("triton.cudagraphs")))
    compiled = torch.compile(_own_copy(_next_token_logits), mode=mode, options=options, backend=backend,
                             fullgraph=True, dynamic=False)

    def step(tokens: torch.Tensor, start_pos: int | torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
        if isinstance(start_pos, int):
            start_pos = torch.full((tokens.shape[0],), start_pos, device=tokens.device)
        if not graphs:
            return compiled(model, tokens, start_pos)
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(model, tokens, start_pos).clone()  # the graph's output buffer is reused by the next replay

    return step


def _next_token_logits(model: torch.nn.Module, tokens: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
    return model(tokens, start_pos, last_only=True)[:, -1]


def _own_copy(fn: types.FunctionType) -> types.FunctionType:
    """fn with a code object of its own: dynamo keeps compiled graphs, and its limit of 8 recompilations, per code
    object, so every step (each model and batch size) gets its own budget instead of sharing one per process."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
