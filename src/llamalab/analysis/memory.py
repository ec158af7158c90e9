"""Bytes a model needs: weights by dtype, the KV cache, and training (weights, gradients, AdamW, activations).

Activations are the tensors autograd saves for the backward pass of this package's model with fused
(SDPA) attention and no dropout: nothing of size seq_len² is kept, so they grow linearly with tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llamalab.analysis.params import block_matrices, count_parameters, linear_shapes
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.tuning import LOSS_CHUNK_LOGITS

# Bytes per element of the dtypes weights, caches and activations are kept in.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
WEIGHT_DTYPES = [*DTYPE_BYTES, "int8", "int4"]
FP32 = 4  # statistics computed in float32 whatever the model's dtype (RMSNorm, softmax)
TOKEN_ID = 8  # int64 token ids (embedding input) and targets (cross-entropy)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a floating-point dtype name."""
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def weight_bytes(args: ModelArgs, dtype: str = "bf16", group_size: int = 128) -> int:
    """Bytes of all weights. int8 / int4 quantize the matmul weights (int8: a bf16 scale per output row;
    int4: a bf16 scale and zero point per `group_size` inputs of a row); embedding and norms stay bf16."""
    params = count_parameters(args)
    if dtype in DTYPE_BYTES:
        return params.total * DTYPE_BYTES[dtype]
    if dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"unknown weight dtype {dtype!r}; choose one of: {', '.join(WEIGHT_DTYPES)}")
    bf16 = DTYPE_BYTES["bf16"]
    shapes = linear_shapes(args)[: None if params.output else -1]  # a tied head is the (bf16) embedding
    if dtype == "int8":
        quantized = sum(n_in * n_out + n_out * bf16 for n_in, n_out in shapes)
    else:
        quantized = sum(n_in * n_out // 2 + n_out * math.ceil(n_in / group_size) * 2 * bf16 for n_in, n_out in shapes)
    return quantized + (params.embedding + params.norms) * bf16


def kv_cache_bytes(args: ModelArgs, batch: int = 1, context_len: int = 1, dtype: str = "bf16") -> int:
    """Keys and values of every layer for `batch` sequences of `context_len` positions."""
    per_token = 2 * args.n_layers * args.kv_heads * args.head_dim * dtype_bytes(dtype)
    return per_token * batch * context_len


def cache_dtype(weight_dtype: str) -> str:
    """The KV cache's dtype beside weights in `weight_dtype`: quantized weights keep a bf16 cache."""
    return weight_dtype if weight_dtype in DTYPE_BYTES else "bf16"


def inference_bytes(args: ModelArgs, batch: int, context_len: int, dtype: str = "bf16", tp: int = 1) -> float:
    """Weights and KV cache per tensor-parallel rank (each rank keeps 1/tp of the heads and matrices)."""
    return (weight_bytes(args, dtype) + kv_cache_bytes(args, batch, context_len, cache_dtype(dtype))) / tp


def layer_activation_bytes(args: ModelArgs, tokens: int, dtype: str = "bf16", tp: int = 1) -> int:
    """Bytes one block saves for backward over `tokens` (= batch × seq_len) tokens.

    With tensor parallelism the attention and FFN tensors are split over `tp` ranks; the norms'
    tensors (the residual stream) are replicated.
    """
    p, d, hd = dtype_bytes(dtype), args.dim, args.head_dim
    # per norm: fp32 input, fp32 rsqrt, normed (before the weight), output (the next linear's input)
    norms = 2 * (FP32 * d + FP32 + 2 * p * d)
    # q, k, v, the attention output (also wo's input), and the fp32 log-sum-exp of every head
    attention = p * (2 * args.n_heads * hd + 2 * args.kv_heads * hd) + FP32 * args.n_heads
    # w1 x (SiLU's input), silu(w1 x), w3 x, and their product (w2's input)
    feed_forward = 4 * p * args.ffn_hidden_dim
    return tokens * (norms + (attention + feed_forward) // tp)


def head_activation_bytes(args: ModelArgs, tokens: int, dtype: str = "bf16", tp: int = 1) -> int:
    """Bytes saved outside the blocks: the final norm's tensors, the token ids, and the head's share.

    On one rank the chunked head + loss (`model.head_loss`) has computed its gradients in the forward pass
    and keeps them: the hidden states' (per token) and the head weight's (once). Split by tensor parallelism
    the head keeps its input, the fp32 log-softmax of its logits and the targets.
    """
    p, d = dtype_bytes(dtype), args.dim
    norm = FP32 * d + FP32 + p * d  # fp32 input, fp32 rsqrt, normed (before the weight)
    if tp == 1:
        return tokens * (norm + p * d + TOKEN_ID) + args.vocab_size * d * p
    return tokens * (norm + p * d + FP32 * args.vocab_size // tp + 2 * TOKEN_ID)


def logits_gradient_bytes(args: ModelArgs, tokens: int, tp: int = 1, dtype: str = "bf16") -> int:
    """Transient bytes of the loss on top of what is saved.

    On one rank (`model.head_loss`, GPU chunk size): the fp32 logits of one chunk; in a 16-bit compute dtype the
    fp32 sum of the head weight's gradient (in fp32 it is the saved gradient) and the chunk's logit gradients cast
    to that dtype for the two matmuls (`x @ w.T`'s 16-bit result, copied into the fp32 buffer, is as large but dead
    by then); and the head's input, alive as the loss's argument while its gradients are built, saved by nothing.
    On a GPU at batch 4 × 1024 tokens and a vocabulary of 8192 in bf16 the last two are 67 MB + 4 MB: the 71 MB an
    estimate without them missed against `torch.cuda.max_memory_allocated` (issue 19). Split by tensor
    parallelism: the fp32 gradients of the log-probabilities and of the logits, alive together as backward starts.
    """
    if tp == 1:
        chunk = min(tokens, max(1, LOSS_CHUNK_LOGITS["cuda"] // args.vocab_size))
        p = dtype_bytes(dtype)
        # in float32 the sum is the saved weight gradient itself (`head_activation_bytes`) and the logits need no cast
        sum_and_copy = FP32 * args.vocab_size * args.dim + p * chunk * args.vocab_size if p != FP32 else 0
        return FP32 * args.vocab_size * chunk + sum_and_copy + p * tokens * args.dim
    return 2 * tokens * FP32 * args.vocab_size // tp


def activation_bytes(
    args: ModelArgs, batch: int, seq_len: int, dtype: str = "bf16", checkpointing: bool = False, tp: int = 1
) -> int:
    """Peak activation bytes of a training step: the tensors saved for backward plus the logits' gradients.

    With activation checkpointing every block keeps only its input; backward recomputes one block at a
    time once the head's tensors are freed, so the peak is the larger of the two.
    """
    tokens = batch * seq_len
    layer = layer_activation_bytes(args, tokens, dtype, tp)
    head = head_activation_bytes(args, tokens, dtype, tp) + logits_gradient_bytes(args, tokens, tp, dtype)
    if checkpointing:
        return args.n_layers * tokens * args.dim * dtype_bytes(dtype) + max(head, layer)
    return args.n_layers * layer + head


# Bytes per parameter of each training precision: (weights, gradients, fp32 master copy, AdamW m and v)
PRECISIONS = {
    "fp32": (4, 4, 0, 8),
    "mixed": (2, 2, 4, 8),  # bf16 weights and gradients, fp32 master weights and optimizer states
    "bf16": (2, 2, 0, 4),  # everything in bf16, optimizer states included
}


def compute_dtype(precision: str) -> str:
    """The dtype weights and activations take in the forward pass of a training precision."""
    return "fp32" if PRECISIONS[precision][0] == DTYPE_BYTES["fp32"] else "bf16"


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one rank holds during a training step."""

    weights: int
    gradients: int
    master_weights: int
    optimizer: int  # AdamW's two moments
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.master_weights + self.optimizer + self.activations


LORA_TARGET_SHAPES = {"wq": 0, "wk": 1, "wv": 2, "wo": 3, "w1": 4, "w2": 5, "w3": 6}  # index in a block's matrices
DEQUANTIZE_ROWS = 1024  # rows of a quantized weight dequantized at once in a QLoRA pass (quantize/rows.py)


def lora_parameters(args: ModelArgs, rank: int, targets: tuple[str, ...] | list[str]) -> int:
    """Trainable parameters of LoRA adapters of `rank` on the targeted projections: rank × (in + out) each."""
    block = [shape for shapes in block_matrices(args).values() for shape in shapes]
    per_layer = sum(rank * sum(block[LORA_TARGET_SHAPES[t]]) for t in targets if t in LORA_TARGET_SHAPES)
    head = rank * (args.dim + args.vocab_size) if "output" in targets else 0
    return args.n_layers * per_layer + head


def training_memory(
    args: ModelArgs,
    batch: int,
    seq_len: int,
    precision: str = "mixed",
    checkpointing: bool = False,
    tp: int = 1,
    dp: int = 1,
    zero: int = 3,
    lora_rank: int = 0,
    lora_targets: tuple[str, ...] | list[str] = ("wq", "wv"),
    base: str | None = None,
) -> TrainingMemory:
    """Memory of one rank training with AdamW on a micro-batch of `batch` sequences.

    Parallel layout: tensor parallelism splits every weight matrix over `tp` ranks (norms replicated);
    data parallelism over `dp` ranks shards, as ZeRO stage `zero`: 1 the optimizer states (AdamW moments and
    fp32 master weights), 2 also the gradients, 3 (FSDP) also the weights.
    With `lora_rank` only adapters on `lora_targets` train: the frozen base is kept in `base` (fp32, bf16, or
    int8 / int4: QLoRA; default the precision's compute dtype) and only the adapters have gradients and AdamW
    state; the activations are the full model's plus each adapter's rank-sized product (and, over a
    quantized base, the one block of weight rows dequantized at a time).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown training precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if tp < 1 or dp < 1 or zero not in (1, 2, 3):
        raise ConfigError(f"need tp >= 1, dp >= 1 and zero in 1, 2, 3; got tp={tp}, dp={dp}, zero={zero}")
    params = count_parameters(args)
    bytes_w, bytes_g, bytes_master, bytes_opt = PRECISIONS[precision]
    dtype = compute_dtype(precision)
    per_rank = (params.total - params.norms) / tp + params.norms  # parameters on this rank before data sharding
    activations = activation_bytes(args, batch, seq_len, dtype, checkpointing, tp)
    if lora_rank:
        base = base or dtype
        trainable = lora_parameters(args, lora_rank, lora_targets) / tp
        frozen = weight_bytes(args, base) / tp
        weights = frozen / (dp if zero == 3 else 1) + trainable * bytes_w / (dp if zero == 3 else 1)
        per_rank = trainable
        tokens, p = batch * seq_len, dtype_bytes(dtype)
        activations += round(tokens * lora_rank * p * args.n_layers * len(set(lora_targets) & set(LORA_TARGET_SHAPES)))
        if base in ("int8", "int4"):  # dequantized rows live inside a block, the loss's transients after the last one
            dequantized = max(min(n_out, DEQUANTIZE_ROWS) * n_in for n_in, n_out in linear_shapes(args)) * FP32
            activations += max(0, dequantized - logits_gradient_bytes(args, tokens, tp, dtype))
    else:
        weights = per_rank * bytes_w / (dp if zero == 3 else 1)
    gradients = per_rank * bytes_g / (dp if zero >= 2 else 1)
    master, optimizer = per_rank * bytes_master / dp, per_rank * bytes_opt / dp
    return TrainingMemory(round(weights), round(gradients), round(master), round(optimizer), activations)
