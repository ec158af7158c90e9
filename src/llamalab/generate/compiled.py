"""The decode step compiled with torch.compile, returned to the caller (nothing is rebound globally).

Shapes are kept static so that one compilation serves every step of a batch size: positions are
always a (bsz,) tensor and attention runs over the whole KV cache under a mask. On CUDA the step is
captured in a CUDA graph, and inductor's coordinate-descent tuning turns each batch-1 matrix-vector
product into a tuned reduction that also fuses the int8 dequantization (gpt-fast's recipe).

Compile time: every block's forward is one nested compile region (`compile_blocks_once`), so dynamo traces and
inductor compiles one block and calls it for every layer, instead of unrolling all layers into one graph. The
compiled program is still one graph (one CUDA graph on CUDA); only fusion across a block's boundary is lost.
SmolLM2-135M (30 layers) on a 2-core CPU: `generate --compile` 71.7 -> 27.6 s cold (bench/README.md).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import types

import torch
from torch import nn

from llamalab.generate.engine import Step
from llamalab.model.kv_cache import Placement

# inductor options of the CUDA step: "reduce-overhead" (CUDA graphs) plus tuned matrix-vector reductions
CUDA_OPTIONS = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}


def compile_decode_step(
    model: torch.nn.Module, mode: str | None = None, backend: str = "inductor", options: dict | None = None,
    regions: bool | None = None,
) -> Step:
    """A compiled (tokens (bsz, 1), start_pos, kv_len) -> logits (bsz, vocab) step; it reads the whole KV cache
    (static shapes), so it ignores kv_len.

    With neither `mode` nor `options` given, inductor on CUDA gets `CUDA_OPTIONS`, elsewhere its defaults.
    regions: compile one block for all layers (`compile_blocks_once`); False unrolls every layer into the graph;
    None: True unless the environment sets LLAMALAB_COMPILE_REGIONS=0.
    """
    device = model.device
    if regions is None:
        regions = os.environ.get("LLAMALAB_COMPILE_REGIONS", "1") != "0"
    if regions:
        compile_blocks_once(model)
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


def compile_blocks_once(model: torch.nn.Module) -> bool:
    """Make every block's forward one shared `torch.compiler.nested_compile_region` (eager calls are unchanged);
    True if done. Left alone: a model without `layers` of one class, or with DTensor (tensor-parallel) weights."""
    layers = getattr(model, "layers", None)
    if not layers or len({type(layer) for layer in layers}) != 1:
        return False
    if not hasattr(torch.compiler, "nested_compile_region"):  # torch < 2.8
        return False
    if any(type(p) not in (torch.Tensor, nn.Parameter) for p in model.parameters()):
        return False
    region = _region(type(layers[0]))
    for layer in layers:
        layer.forward = functools.partial(_call_region, region, layer)
    return True


def _call_region(region, layer: nn.Module, x, cos, sin, where: Placement | None = None) -> torch.Tensor:
    """The block through its region. Dynamo reuses a region's trace only for arguments it can compare (tensors,
    numbers, None, modules), so the Placement goes in field by field; and the layer's KV cache tensors go in as
    arguments, since a reused trace that reached them only through the module wrote every layer's keys into the first
    layer's cache (torch 2.13; tests/unit/generate/test_compiled.py)."""
    fields = () if where is None else tuple(getattr(where, f.name) for f in dataclasses.fields(where))
    cache = getattr(getattr(layer, "attention", None), "cache", None)
    buffers = () if cache is None else cache.tensors()
    return region(layer, x, cos, sin, buffers, where is not None, *fields)


@functools.cache
def _region(block_class: type):
    """One region per block class: dynamo reuses a trace only for calls of the same wrapped function."""

    def block(layer, x, cos, sin, buffers, placed, *fields):
        return block_class.forward(layer, x, cos, sin, Placement(*fields) if placed else None)

    return torch.compiler.nested_compile_region(block)
