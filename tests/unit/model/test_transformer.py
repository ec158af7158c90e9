import math

import pytest
import torch
import torch.nn.functional as F

from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.model import RMSNorm, Transformer


def test_seed_debug_example_gives_vocab_logits():
    model = Transformer(ModelArgs(dim=8, n_layers=2, n_heads=2, vocab_size=32000))
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 32000)


def test_rmsnorm_matches_formula_and_keeps_dtype():
    norm = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 6)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * torch.arange(1.0, 7.0)
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert norm.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


def test_block_is_pre_norm_residual():
    model = Transformer(ModelArgs.from_preset("debug")).eval()
    block, x = model.layers[0], torch.randn(1, 5, 64)
    cos, sin = model.rope_cos[None, :5], model.rope_sin[None, :5]
    h = x + block.attention(block.attention_norm(x), cos, sin)
    ffn, normed = block.feed_forward, block.ffn_norm(h)
    expected = h + ffn.w2(F.silu(ffn.w1(normed)) * ffn.w3(normed))
    assert torch.allclose(block(x, cos, sin), expected, atol=1e-6)


def test_loss_is_cross_entropy_of_logits_with_ignore_index():
    model = Transformer(ModelArgs.from_preset("debug"))
    tokens = torch.randint(0, 256, (2, 10))
    targets = torch.randint(0, 256, (2, 10))
    targets[0, :4] = -100
    logits = model(tokens)
    expected = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(model.loss(tokens, targets), expected, atol=1e-5)


def test_untrained_loss_is_near_log_vocab():
    model = Transformer(ModelArgs.from_preset("debug"))
    tokens = torch.randint(0, 256, (4, 32))
    assert abs(model.loss(tokens, tokens).item() - math.log(256)) < 0.3


def test_init_is_normal_002_with_depth_scaled_residual_projections():
    args = ModelArgs(dim=256, n_layers=8, n_heads=4, vocab_size=1000)
    model = Transformer(args)
    assert abs(model.layers[0].attention.wq.weight.std().item() - 0.02) < 1e-3
    scaled = 0.02 / math.sqrt(2 * 8)
    assert abs(model.layers[3].attention.wo.weight.std().item() - scaled) < 3e-4
    assert abs(model.layers[3].feed_forward.w2.weight.std().item() - scaled) < 3e-4
    assert torch.all(model.norm.weight == 1)


def test_tied_embeddings_share_one_tensor_and_gradient():
    model = Transformer(ModelArgs.from_preset("debug", tie_embeddings=True))
    assert model.output.weight is model.tok_embeddings.weight
    assert "output.weight" in model.state_dict()
    model.loss(torch.randint(0, 256, (1, 8)), torch.randint(0, 256, (1, 8))).backward()
    assert model.tok_embeddings.weight.grad is not None


def test_dropout_acts_only_in_training():
    model = Transformer(ModelArgs.from_preset("debug", dropout=0.5))
    tokens = torch.randint(0, 256, (1, 8))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))


def test_meta_model_materialises_with_working_rope():
    args = ModelArgs.from_preset("debug")
    real = Transformer(args)
    with torch.device("meta"):
        lazy = Transformer(args)
    lazy.load_state_dict(real.state_dict(), assign=True)
    lazy.init_rope()
    tokens = torch.randint(0, 256, (1, 9))
    assert torch.allclose(lazy(tokens), real(tokens), atol=1e-6)


def test_rope_tables_stay_float32_under_bfloat16_weights():
    model = Transformer(ModelArgs.from_preset("debug")).to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.float32
    assert model.layers[0].attention.wq.weight.dtype == torch.bfloat16
    assert model(torch.randint(0, 256, (1, 5))).dtype == torch.float32


def test_unknown_attention_impl_is_rejected():
    with pytest.raises(ConfigError, match="attention_impl"):
        Transformer(ModelArgs.from_preset("debug"), attention_impl="flash9")
