"""A toy translation task for the encoder–decoder: copy, reverse or sort a sequence of digits."""
from __future__ import annotations

import torch

from llamalab.baselines.seq2seq import Seq2SeqArgs, Seq2SeqTransformer
from llamalab.errors import ConfigError

PAD, BOS, EOS = 0, 1, 2
VOCAB_SIZE = 13  # PAD, BOS, EOS and the ten digits
TASKS = {
    "copy": lambda digits: digits,
    "reverse": lambda digits: digits[::-1],
    "sort": sorted,
}


def digit_batch(task: str, batch_size: int, max_digits: int, generator: torch.Generator | None = None):
    """Random examples of 1..max_digits digits: src (bsz, max_digits+1) ends in EOS; tgt (bsz, max_digits+2) is
    BOS, the answer, EOS; both padded with PAD."""
    if task not in TASKS:
        raise ConfigError(f"unknown digit task {task!r}; choose one of {sorted(TASKS)}")
    lengths = torch.randint(1, max_digits + 1, (batch_size,), generator=generator).tolist()
    src = torch.full((batch_size, max_digits + 1), PAD)
    tgt = torch.full((batch_size, max_digits + 2), PAD)
    for row, n in enumerate(lengths):
        digits = torch.randint(0, 10, (n,), generator=generator).tolist()
        src[row, : n + 1] = torch.tensor([3 + d for d in digits] + [EOS])
        tgt[row, : n + 2] = torch.tensor([BOS] + [3 + d for d in TASKS[task](digits)] + [EOS])
    return src, tgt


def train_digit_task(task: str = "reverse", steps: int = 600, batch_size: int = 64, max_digits: int = 8,
                     dim: int = 64, n_layers: int = 2, lr: float = 3e-3, seed: int = 0):
    """Train a small encoder–decoder on a digit task with Adam (linear warm-up, then linear decay);
    return the model and its loss at every step."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    args = Seq2SeqArgs(VOCAB_SIZE, VOCAB_SIZE, dim=dim, n_layers=n_layers, n_heads=4, ffn_dim=4 * dim,
                       dropout=0.0, max_seq_len=max_digits + 2, pad_id=PAD)
    model = Seq2SeqTransformer(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, (steps - step) / (steps - warmup + 1))
    )
    losses = []
    for _ in range(steps):
        src, tgt = digit_batch(task, batch_size, max_digits, generator)
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model.eval(), losses


def sequence_accuracy(model: Seq2SeqTransformer, task: str, n: int = 500, max_digits: int = 8, seed: int = 1) -> float:
    """Fraction of n fresh examples whose greedy decoding equals the answer exactly (EOS included)."""
    src, tgt = digit_batch(task, n, max_digits, torch.Generator().manual_seed(seed))
    out = model.greedy_decode(src, BOS, EOS, max_len=tgt.shape[1])
    out = torch.nn.functional.pad(out, (0, tgt.shape[1] - out.shape[1]), value=PAD)  # (n, max_digits + 2)
    return (out == tgt).all(dim=1).float().mean().item()
