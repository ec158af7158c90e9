"""The chunked head + cross-entropy equals F.cross_entropy of the full logits: loss and both gradients."""
import pytest
import torch
import torch.nn.functional as F

from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.model.head_loss import head_cross_entropy
from llamalab.tuning import LOSS_CHUNK_LOGITS


def reference(h, weight, targets):
    """Loss and gradients the plain way: the whole (tokens, vocab) logits, then F.cross_entropy."""
    h, weight = h.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = F.cross_entropy(F.linear(h, weight).float(), targets, ignore_index=-100)
    loss.backward()
    return loss, h.grad, weight.grad


def ours(h, weight, targets, grad_scale=1.0):
    h, weight = h.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = head_cross_entropy(h, weight, targets)
    (loss * grad_scale).backward()
    return loss, h.grad / grad_scale, weight.grad / grad_scale


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 tokens for a 50-entry vocabulary: several chunks and a ragged last one."""
    monkeypatch.setitem(LOSS_CHUNK_LOGITS, "cpu", 7 * 50)


@pytest.mark.parametrize("skipped", [0, 5], ids=["all targets", "some -100"])
def test_loss_and_gradients_equal_cross_entropy_of_the_logits(small_chunks, skipped):
    g = torch.Generator().manual_seed(0)
    h, weight = torch.randn(30, 16, generator=g), torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (30,), generator=g)
    targets[torch.randperm(30, generator=g)[:skipped]] = -100
    for got, want in zip(ours(h, weight, targets, grad_scale=0.25), reference(h, weight, targets)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_under_bfloat16_autocast_it_matches_the_autocast_reference(small_chunks):
    g = torch.Generator().manual_seed(1)
    h, weight = torch.randn(30, 16, generator=g), torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (30,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(h, weight, targets), reference(h, weight, targets)
    exact = reference(h, weight, targets)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)  # the same bf16 logits, float32 softmax
    for ours_grad, autocast_grad, fp32_grad in zip(got[1:], want[1:], exact[1:]):
        assert ours_grad.dtype == torch.float32
        # bf16 matmuls: as close to the float32 gradient as autocast's own
        bound = 2 * (autocast_grad - fp32_grad).abs().max()
        assert (ours_grad - fp32_grad).abs().max() <= bound


def test_without_gradients_only_the_loss_is_computed(small_chunks):
    g = torch.Generator().manual_seed(2)
    h, weight = torch.randn(30, 16, generator=g), torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (30,), generator=g)
    with torch.no_grad():
        loss = head_cross_entropy(h, weight, targets)
    torch.testing.assert_close(loss, F.cross_entropy(h @ weight.t(), targets))
    assert torch.isnan(head_cross_entropy(h, weight, torch.full((30,), -100)))  # nothing to average: nan, as F's


@pytest.mark.parametrize("tied", [True, False])
def test_model_training_gradients_equal_those_of_the_logits(small_chunks, tied):
    args = ModelArgs(dim=16, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=8,
                     max_seq_len=16, tie_embeddings=tied)
    torch.manual_seed(0)
    model = Transformer(args)
    tokens = torch.randint(0, args.vocab_size, (3, 12))
    targets = tokens.roll(-1, 1)
    targets[:, -1] = -100
    model(tokens, targets=targets).backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
def test_on_cuda_under_bfloat16_autocast_it_matches_the_autocast_reference():
    g = torch.Generator().manual_seed(3)
    h, weight = torch.randn(4096, 256, generator=g).cuda(), torch.randn(32000, 256, generator=g).cuda() * 0.05
    targets = torch.randint(0, 32000, (4096,), generator=g).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got, want = ours(h, weight, targets), reference(h, weight, targets)
    exact = reference(h, weight, targets)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-3)
    for ours_grad, autocast_grad, fp32_grad in zip(got[1:], want[1:], exact[1:]):
        assert (ours_grad - fp32_grad).abs().max() <= 2 * (autocast_grad - fp32_grad).abs().max()
