"""A CPU decode step that runs the whole model in one C call (cpu_decode.c): `native_step(model)`.

At batch 1 a PyTorch decode step of a small model spends most of its time between ops (~20 per layer), not in them.
The C step does every layer's work for up to MAX_ROWS rows (more go MAX_ROWS at a time) in one OpenMP parallel region
over the model's own tensors (float32 weights, or GGUF's quantized blocks where the file is mapped), reading
and writing the KV cache in place, static or paged (through the rows' block tables: no gather), each row attending
over its own positions only; the readable model stays the reference (tests compare the two). Prefill and anything
the step does not cover (LoRA layers, other dtypes, training) go through the model as usual.
"""
from __future__ import annotations

import ctypes
import sys
import time

import torch
from torch import nn

from llamalab.model import Transformer
from llamalab.model.kv_cache import KVCache, PagedKVCache
from llamalab.model.model import Attention, FeedForward, RMSNorm
from llamalab.quantize.blocks import GGML_TYPE_IDS, BlockEmbedding, BlockLinear
from llamalab.quantize.native import MAX_ROWS, kernels
from llamalab.quantize.threads import ThreadChoice

F32 = 0  # the kind of a float32 weight in cpu_decode.c (blocks: GGML_TYPE_IDS)
HUGE_PAGE = 2 << 20
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25  # Linux madvise advice (MADV_COLLAPSE: kernel 6.1 on)
_P, _I64 = ctypes.c_void_p, ctypes.c_int64


class CLinear(ctypes.Structure):
    _fields_ = [("kind", _I64), ("out", _I64), ("inputs", _I64), ("weight", _P)]


class CLayer(ctypes.Structure):
    _fields_ = [("attention_norm", _P), ("ffn_norm", _P), ("k", _P), ("v", _P),
                *((name, CLinear) for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"))]


class CModel(ctypes.Structure):
    _fields_ = [*((name, _I64) for name in ("n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "hidden", "vocab",
                                            "max_seq", "block_size", "block_stride", "head_stride")),
                ("eps", ctypes.c_double), ("rope_cos", _P), ("rope_sin", _P), ("norm", _P), ("embedding", CLinear),
                ("output", CLinear), ("layers", ctypes.POINTER(CLayer))]


def native_step(model: Transformer):
    """A decode step (tokens (n, 1), start_pos, kv_len) -> logits (n, vocab) running in C when the model is one the C
    step covers (on CPU, float32, plain or kernel-quantized layers) and the C kernels build; else None."""
    if not supported(model) or kernels() is None:
        return None
    return NativeStep(model)


def huge_pages(model: nn.Module) -> int:
    """Back the model's weights with 2 MiB pages, in place (Linux MADV_COLLAPSE: the kernel moves the pages, no copy
    is made; RSS stayed the same in every model measured); return the bytes collapsed (0 where the kernel cannot).

    Every 2 MiB page a weight of 64 KiB or more touches is collapsed (a page shared with other memory too; one with
    a hole in it fails and is left as it is). A decode step streams every weight once; with 4 KiB pages the TLB
    misses cost 10-25% of it here (A/B in one process: stories110M's C step 79 -> 104 tokens/s, SmolLM2 Q4_1
    120 -> 131)."""
    if not sys.platform.startswith("linux"):
        return 0
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes, madvise.restype = [_P, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    pages = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.nbytes >= 64 << 10:
            pages.update(range(tensor.data_ptr() // HUGE_PAGE, -(-(tensor.data_ptr() + tensor.nbytes) // HUGE_PAGE)))
    collapsed = 0
    for page in sorted(pages):
        if madvise(page * HUGE_PAGE, HUGE_PAGE, MADV_HUGEPAGE) == 0:
            collapsed += HUGE_PAGE * (madvise(page * HUGE_PAGE, HUGE_PAGE, MADV_COLLAPSE) == 0)
    return collapsed


def supported(model: nn.Module) -> bool:
    """Whether the C step computes this model's forward: a CPU float32 Transformer in eval mode whose layers are the
    model's own modules holding plain float32 weights or GGUF's blocks (quantize/blocks.py's kinds)."""
    if not isinstance(model, Transformer) or model.training or model.device.type != "cpu":
        return False
    if model.args.dropout or _hooked(list(model.modules())):  # hooks: e.g. LoRA adapters kept beside the weights
        return False
    try:
        if model.dtype != torch.float32:
            return False
    except StopIteration:
        return False
    for layer in model.layers:
        attention, ffn = layer.attention, layer.feed_forward
        if type(attention) is not Attention or type(ffn) is not FeedForward or attention.head_dim % 2:
            return False
        if any(type(norm) is not RMSNorm or not _plain_float(norm.weight) for norm in (layer.attention_norm,
                                                                                        layer.ffn_norm)):
            return False
        linears = (attention.wq, attention.wk, attention.wv, attention.wo, ffn.w1, ffn.w2, ffn.w3)
        if not all(_linear_supported(m) for m in linears):
            return False
    return (type(model.norm) is RMSNorm and _plain_float(model.norm.weight) and _linear_supported(model.output)
            and _embedding_supported(model.tok_embeddings))


class NativeStep:
    """The C decode step of one model; falls back to the model's forward for what it does not cover."""

    ragged = True  # each row attends over its own positions (the model's forward reads every row up to kv_len)

    def __init__(self, model: Transformer):
        self.model, self.library = model, kernels()
        # the modules' hook dicts, read at every step (registering or removing a hook changes these dicts in place):
        # a scan of ~300 modules' attributes took ~40 us a token, ~0.7% of SmolLM2's step
        self.hook_dicts = [d for m in model.modules() for d in (m._forward_hooks, m._forward_pre_hooks)]
        self.threads = ThreadChoice()  # up to torch.get_num_threads(); fewer while that is faster (a busy core)
        self.library.decode_step.argtypes = [_P, _P, _I64, _P, _P, _I64, _P, _I64]
        self.library.decode_step.restype = ctypes.c_int
        a = model.args
        first = model.layers[0].attention
        self.layers = (CLayer * a.n_layers)(*(_layer(block) for block in model.layers))
        self.shape = CModel(
            n_layers=a.n_layers, dim=a.dim, n_heads=first.wq.out_features // first.head_dim,
            n_kv_heads=first.n_kv_heads, head_dim=first.head_dim, hidden=model.layers[0].feed_forward.w1.out_features,
            vocab=model.output.out_features, max_seq=0, eps=model.norm.eps, norm=model.norm.weight.data_ptr(),
            embedding=_embedding(model.tok_embeddings), output=_linear(model.output), layers=self.layers)
        self.cache: KVCache | PagedKVCache | None = None
        self.tables: torch.Tensor | None = None  # the cache's block tables (rows, blocks per row): row i of a step is i
        self.rope: torch.Tensor | None = None
        self.vocab, self.embeddings = model.output.out_features, _embedding(model.tok_embeddings).out

    def __call__(self, tokens: torch.Tensor, start_pos: int | torch.Tensor, kv_len: int | None = None
                 ) -> torch.Tensor:
        model = self.model
        cache = model.kv_cache
        n = tokens.shape[0]
        if (type(cache) not in (KVCache, PagedKVCache) or tokens.shape[1] != 1 or n > cache.batch_size
                or model.training or torch.is_grad_enabled() or _global_hooks() or any(self.hook_dicts)):
            return self._forward(tokens, start_pos, kv_len)
        starts = [start_pos] * n if isinstance(start_pos, int) else start_pos.tolist()
        ids = tokens.view(n).tolist()
        if min(starts) < 0 or max(starts) >= cache.max_seq_len or min(ids) < 0 or max(ids) >= self.embeddings:
            return self._forward(tokens, start_pos, kv_len)  # the model's own error
        if cache is not self.cache:
            self._point_at(cache)
        if model.rope_cos.shape[0] < cache.max_seq_len:
            model.init_rope(positions=cache.max_seq_len)
        if model.rope_cos is not self.rope:
            self.shape.rope_cos, self.shape.rope_sin = model.rope_cos.data_ptr(), model.rope_sin.data_ptr()
            self.rope = model.rope_cos
        logits = torch.empty(n, self.vocab)
        tables, width = self.tables.data_ptr(), self.tables.shape[1]
        threads, began = self.threads.count, time.perf_counter()  # the count is chosen by timing the steps
        for a in range(0, n, MAX_ROWS):  # rows a..b-1 in one call, their tables from row a on
            b = min(a + MAX_ROWS, n)
            if self.library.decode_step(ctypes.byref(self.shape), (_I64 * (b - a))(*ids[a:b]), b - a,
                                        (_I64 * (b - a))(*starts[a:b]), tables + 8 * a * width, width,
                                        logits[a].data_ptr(), threads):
                raise MemoryError("the C decode step could not allocate its scratch memory")
        self.threads.record(time.perf_counter() - began, n)
        return logits

    def _forward(self, tokens: torch.Tensor, start_pos: int | torch.Tensor, kv_len: int | None) -> torch.Tensor:
        return self.model(tokens, start_pos, kv_len=kv_len, last_only=True)[:, -1]

    def _point_at(self, cache: KVCache | PagedKVCache) -> None:
        """Aim the C layers at the (new) cache's tensors and layout."""
        for c_layer, (k, v) in zip(self.layers, cache.layer_tensors()):
            if k.dtype != torch.float32 or not (k.is_contiguous() and v.is_contiguous()) or k.device.type != "cpu":
                raise ValueError("the C decode step needs a contiguous float32 KV cache on the CPU")
            c_layer.k, c_layer.v = k.data_ptr(), v.data_ptr()
        self.tables, block_size, block_stride, head_stride = cache.block_layout()
        if self.tables.dtype != torch.int64 or not self.tables.is_contiguous() or self.tables.device.type != "cpu":
            raise ValueError("the C decode step needs the KV cache's block tables as contiguous int64 on the CPU")
        shape = self.shape
        shape.max_seq, shape.block_size, shape.block_stride, shape.head_stride = (
            cache.max_seq_len, block_size, block_stride, head_stride)
        self.cache = cache


def _hooked(modules: list[nn.Module]) -> bool:
    """Whether a forward hook would change what these modules compute (a LoRA adapter not merged, an inspection)."""
    return _global_hooks() or any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _global_hooks() -> bool:
    """Whether a forward hook is registered for every module (nn.modules.module.register_module_forward_hook)."""
    return bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)


def _layer(block: nn.Module) -> CLayer:
    attention, ffn = block.attention, block.feed_forward
    linears = {name: _linear(getattr(attention, name)) for name in ("wq", "wk", "wv", "wo")}
    linears |= {name: _linear(getattr(ffn, name)) for name in ("w1", "w2", "w3")}
    return CLayer(attention_norm=block.attention_norm.weight.data_ptr(), ffn_norm=block.ffn_norm.weight.data_ptr(),
                  **linears)


def _embedding(module: nn.Module) -> CLinear:
    """The C description of the token embedding table (vocab, dim)."""
    if type(module) is BlockEmbedding:
        return _linear(module.table)
    return CLinear(F32, module.num_embeddings, module.embedding_dim, module.weight.data_ptr())


def _embedding_supported(module: nn.Module) -> bool:
    """A float32 nn.Embedding, or a BlockEmbedding (GGUF's token_embd) whose vectors are float32."""
    if type(module) is nn.Embedding:
        return _plain_float(module.weight)
    return type(module) is BlockEmbedding and module.dtype == torch.float32 and _linear_supported(module.table)


def _linear(module: nn.Module) -> CLinear:
    """The C description of a supported linear layer (a pointer into its own tensor: float32, or blocks)."""
    if isinstance(module, BlockLinear):
        return CLinear(GGML_TYPE_IDS[module.kind], module.out_features, module.in_features, module.blocks.data_ptr())
    return CLinear(F32, module.out_features, module.in_features, module.weight.data_ptr())


def _linear_supported(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return module.bias is None and _plain_float(module.weight)
    return isinstance(module, BlockLinear) and module.blocks.is_contiguous() and module.blocks.device.type == "cpu"


def _plain_float(weight: torch.Tensor) -> bool:
    """A contiguous float32 CPU tensor (not a DTensor or another subclass)."""
    return (type(weight) in (torch.Tensor, nn.Parameter) and weight.dtype == torch.float32
            and weight.device.type == "cpu" and weight.is_contiguous())
