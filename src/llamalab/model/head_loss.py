"""The output head and the cross-entropy together, a chunk of tokens at a time: no (tokens, vocab) logits tensor.

For a small model most of a training step's memory traffic is the logits: 2048 tokens × 32,000 entries
is 262 MB in float32, written by the head, read and written again by log-softmax and by its backward.
Here a chunk of tokens' logits (about 16 MB) is computed in a reused buffer, turned into the gradient of
the loss in place (softmax minus the one-hot target), and multiplied straight into the gradients of the
hidden states and of the head's weight. The gradients are thus ready at the end of the forward pass and
backward only scales them by the incoming gradient (one output head matmul fewer than recomputing).
Without gradients (evaluation) only the loss is computed, chunk by chunk.
"""
from __future__ import annotations

import functools
import sys

import torch

from llamalab.tuning import LOSS_CHUNK_LOGITS

IGNORE_INDEX = -100  # targets equal to this are skipped, as in F.cross_entropy


def head_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T (never materialized) against targets; -100 is skipped.

    h (tokens, dim), weight (vocab, dim), targets (tokens,). Under autocast the matrix products run in the
    autocast dtype and the softmax in float32, like `F.cross_entropy(F.linear(h, weight).float(), targets)`.
    """
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _HeadCrossEntropy.apply(h, weight, targets)
    return _chunked(h, weight, targets, with_grads=False)[0]


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets):
        loss, grad_h, grad_weight = _chunked(h, weight, targets, with_grads=True)
        ctx.save_for_backward(grad_h, grad_weight)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_h, grad_weight = ctx.saved_tensors
        return grad_h * grad_loss, grad_weight * grad_loss, None


def _left_to_eager(fn):
    """torch.compiler.disable(fn), applied at its first call after dynamo is imported: the decorator itself imports
    dynamo (about a second at `import llamalab.model`), and before that import nothing can be compiling."""
    eager = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if not eager:
            eager.append(torch.compiler.disable(fn))
        return eager[0](*args, **kwargs)

    return call


@_left_to_eager  # a loop of in-place chunk updates: left to eager mode inside a compiled model
def _chunked(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_grads: bool):
    """(mean loss, d loss / d h, d loss / d weight) — the gradients None without `with_grads`."""
    device_type = h.device.type
    compute = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    with torch.autocast(device_type, enabled=False):
        w = weight.detach().to(compute)  # (vocab, dim)
        vocab = w.shape[0]
        valid = targets != IGNORE_INDEX  # (tokens,)
        count = valid.sum()
        scale = valid / count  # (tokens,) d mean / d token loss; 0 where skipped
        safe_targets = targets.masked_fill(~valid, 0)[:, None]  # (tokens, 1)
        losses = torch.empty(len(targets), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if with_grads else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if with_grads else None
        chunk = max(1, LOSS_CHUNK_LOGITS.get(device_type, LOSS_CHUNK_LOGITS["cpu"]) // vocab)
        if device_type == "cpu" and compute != torch.float32:
            chunk *= 4  # each chunk adds a 16-bit weight gradient into the float32 sum: that costs more than its matmul
        buffer = torch.empty(min(chunk, len(targets)), vocab, dtype=torch.float32, device=h.device)
        for start in range(0, len(targets), chunk):
            rows = slice(start, start + chunk)
            x = h[rows].detach().to(compute)  # (n, dim)
            logits = buffer[: len(x)]  # (n, vocab) float32
            if compute == torch.float32:
                torch.mm(x, w.t(), out=logits)
            else:
                logits.copy_(x @ w.t())
            target_logits = logits.gather(1, safe_targets[rows])  # (n, 1)
            peak = logits.amax(1, keepdim=True)  # (n, 1)
            probs = logits.sub_(peak).exp_()  # unnormalised, in place
            total = probs.sum(1, keepdim=True)  # (n, 1)
            losses[rows] = (peak + total.log() - target_logits).squeeze(1)
            if not with_grads:
                continue
            # d loss / d logits = (softmax - one-hot of the target) × the token's scale
            probs.mul_(scale[rows, None] / total).scatter_add_(1, safe_targets[rows], -scale[rows, None])
            grad_logits = probs.to(compute)  # (n, vocab)
            grad_h[rows] = grad_logits @ w
            if compute == torch.float32:
                grad_weight.addmm_(grad_logits.t(), x)
            else:
                grad_weight += grad_logits.t() @ x  # summed over the chunks in float32
    return (losses * scale).sum(), grad_h, grad_weight.to(weight.dtype) if with_grads else None
