"""Tensor parallelism (Megatron-style) applied to a built Transformer from outside, keyed by module name.

Column-parallel wq/wk/wv/w1/w3 and row-parallel wo/w2 leave one all-reduce per attention and one per
feed-forward; the embedding and the output head are both split by vocabulary.
Each rank keeps n_heads/tp query heads and n_kv_heads/tp key/value heads (attention views its projections as
(bsz, seqlen, -1, head_dim), so the local head counts follow the shards), and its KV cache is 1/tp.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from llamalab.errors import ConfigError
from llamalab.model import Attention, Transformer
from llamalab.parallel.sizes import check_tp_size


def block_plan(sequence_parallel: bool = False) -> dict[str, ParallelStyle]:
    """How each module of a TransformerBlock is split: Megatron attention and SwiGLU, optionally with
    the norms (and residual stream) split along the sequence between the two all-reduces."""
    plan = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(),
    }
    if sequence_parallel:  # (bsz, seqlen/tp, dim) between blocks: all-reduce becomes reduce-scatter + all-gather
        plan.update({
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None)),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        })
    return plan


def model_plan(sequence_parallel: bool = False, loss_parallel: bool = False) -> dict[str, ParallelStyle]:
    """How the embedding, final norm and output head are split: both by vocabulary (so a tied weight stays tied).

    With `loss_parallel` the logits stay split by vocabulary (a DTensor) for the cross-entropy of
    `torch.distributed.tensor.parallel.loss_parallel`, instead of being gathered whole on every rank.
    """
    between = Shard(1) if sequence_parallel else Replicate()
    output = (ColwiseParallel(input_layouts=between, output_layouts=Shard(-1), use_local_output=False)
              if loss_parallel else ColwiseParallel(input_layouts=between, output_layouts=Replicate()))
    plan = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=between),
        "output": output,
    }
    if sequence_parallel:
        plan["norm"] = SequenceParallel()
    return plan


def apply_tp(
    model: Transformer, tp_mesh: DeviceMesh, sequence_parallel: bool = False, loss_parallel: bool = False
) -> Transformer:
    """Split `model` (built, on CPU, CUDA or meta) in place over the ranks of the 1-D `tp_mesh`.

    Rank 0's weights are the ones kept (they are scattered to the others). A model on the meta device
    is split without communication; load its shards afterwards with `load_local_shards`.
    `sequence_parallel` is for training on sequences whose length tp divides: it saves activation
    memory, and makes every weight a DTensor (as `clip_grad_norm_` needs). `loss_parallel` (training) keeps
    the logits split by vocabulary: compute the loss and run backward inside `loss_parallel()`; the loss is
    then a replicated DTensor.
    """
    tp = tp_mesh.size()
    check_tp_size(model.args, tp, training=model.training)
    for block in model.layers:
        attn = block.attention
        if attn.n_kv_heads < tp:
            replicate_kv_heads(attn, tp)
        parallelize_module(block, tp_mesh, block_plan(sequence_parallel))
        attn.n_kv_heads //= tp  # the key/value heads this rank computes, which its KV cache holds
    parallelize_module(model, tp_mesh, model_plan(sequence_parallel, loss_parallel))
    if model.args.tie_embeddings:  # both halves are Shard(0) over the vocabulary; make them one parameter again
        model.output.weight = model.tok_embeddings.weight
    if sequence_parallel:
        model.tok_embeddings.register_forward_pre_hook(partial(_check_sequence_splits, tp))
    return model


def _check_sequence_splits(tp: int, module: nn.Module, inputs: tuple) -> None:
    """Sequence parallelism gives each rank seqlen/tp positions: refuse a length that does not split."""
    seqlen = inputs[0].shape[1]
    if seqlen % tp:
        raise ConfigError(f"with sequence parallelism the sequence length ({seqlen}) must be a multiple of tp={tp}; "
                          "train on such lengths, and split the model without it for generation")


@torch.no_grad()
def replicate_kv_heads(attn: Attention, tp: int) -> None:
    """Repeat each key/value head tp/n_kv_heads times so that every rank holds the one its query heads use."""
    copies = tp // attn.n_kv_heads
    for linear in (attn.wk, attn.wv):
        weight = linear.weight.view(attn.n_kv_heads, attn.head_dim, -1)  # (n_kv_heads, head_dim, dim)
        weight = weight.repeat_interleave(copies, dim=0).flatten(0, 1)  # (tp*head_dim, dim)
        linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
        linear.out_features = weight.shape[0]
    attn.n_kv_heads = tp
