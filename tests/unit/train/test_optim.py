import math

import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.train.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_is_linear_then_cosine_reaches_the_minimum():
    warmup, total, floor = 10, 110, 0.1
    assert [lr_factor(s, warmup, total, floor) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, warmup, total, floor) == pytest.approx(1.0)
    assert lr_factor(60, warmup, total, floor) == pytest.approx(floor + (1 - floor) / 2)  # cosine half-way
    assert lr_factor(35, warmup, total, floor) == pytest.approx(floor + (1 - floor) * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(110, warmup, total, floor) == pytest.approx(floor)
    assert lr_factor(500, warmup, total, floor) == pytest.approx(floor)  # past the end: stays at the minimum


def test_scheduler_sets_the_optimizer_lr_of_each_step():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = build_scheduler(optimizer, warmup_steps=4, max_steps=8, lr=1e-3, min_lr=1e-4)
    seen = []
    for _ in range(9):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    cosine = [1e-4 + 9e-4 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(5)]  # steps 4..8
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3] + cosine)
    assert seen[4] == pytest.approx(1e-3) and seen[8] == pytest.approx(1e-4)


def test_only_matrices_are_decayed():
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=64, multiple_of=16, tie_embeddings=True))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {names[id(p)] for p in plain["params"]} == {"norm.weight"} | {
        f"layers.{i}.{n}.weight" for i in range(2) for n in ("attention_norm", "ffn_norm")}
    assert len(decayed["params"]) == 1 + 2 * 7  # the (tied) embedding once, 7 projections per layer
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    assert optimizer.defaults["fused"]


def test_decay_shrinks_a_weight_with_no_gradient_by_lr_times_decay():
    weight, gain = torch.nn.Parameter(torch.ones(3, 3)), torch.nn.Parameter(torch.ones(3))
    module = torch.nn.Module()
    module.weight, module.gain = weight, gain
    optimizer = build_optimizer(module, lr=0.1, weight_decay=0.5, betas=(0.9, 0.95))
    weight.grad, gain.grad = torch.zeros(3, 3), torch.zeros(3)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((3, 3), 1 - 0.1 * 0.5))  # AdamW: w -= lr * wd * w
    torch.testing.assert_close(gain.detach(), torch.ones(3))
