import pytest
import torch
from torch import nn

from llamalab.analysis import kv_cache_bytes
from llamalab.baselines.ablation import DEFAULT_VARIANTS, story_data
from llamalab.baselines.variants import (
    CHOICES,
    Variant,
    VariantBlock,
    VariantTransformer,
    matched_args,
    parse_variant,
    variant_parameters,
)
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.train.batches import Batches, TokenData
from llamalab.train.optim import build_optimizer

# hidden_dim 256 = 8·96/3 exactly: the SwiGLU of the LLaMA paper's 2/3·4d rule, unrounded
BASE = ModelArgs(dim=96, n_layers=2, n_heads=8, hidden_dim=256, vocab_size=320, max_seq_len=64)


def test_default_variants_cover_every_switch():
    variants = [parse_variant(spec) for spec in DEFAULT_VARIANTS]
    for field, values in CHOICES.items():
        assert {getattr(v, field) for v in variants} == set(values)


def test_parse_variant_by_name_and_by_changes():
    assert parse_variant("llama") == Variant()
    assert parse_variant("ffn=gelu,norm=layernorm") == Variant(ffn="gelu", norm="layernorm")
    for bad in ("ffn=swish", "colour=red", "gpt5"):
        with pytest.raises(ConfigError, match="ffn|key=value"):
            parse_variant(bad)


@pytest.mark.parametrize("spec", DEFAULT_VARIANTS)
def test_parameters_match_the_llama_reference_within_2_percent(spec):
    reference = variant_parameters(BASE, Variant())
    with torch.device("meta"):
        model = VariantTransformer(matched_args(BASE, parse_variant(spec)), parse_variant(spec))
    assert abs(sum(p.numel() for p in model.parameters()) / reference - 1) < 0.02


def test_matched_widths_are_the_papers():
    # GPT's MLP of 4·dim has the parameters of LLaMA's SwiGLU of 2/3·4·dim
    assert matched_args(BASE, Variant(ffn="gelu")).hidden_dim == 4 * 96
    # MQA drops 2·dim·(dim - head_dim) key/value weights a layer; SwiGLU's three matrices take them back
    assert matched_args(BASE, Variant(attention="mqa")).hidden_dim == 256 + 2 * (96 - 12) // 3


def test_kv_cache_bytes_shrink_with_key_value_heads_as_computed():
    per_token = {}
    for attention in ("mha", "gqa", "mqa"):
        variant = Variant(attention=attention)
        args = matched_args(BASE, variant)
        model = VariantTransformer(args, variant)
        model.setup_cache(batch_size=2, max_seq_len=16)
        allocated = sum(b.nbytes for name, b in model.named_buffers() if ".cache." in name)
        per_token[attention] = allocated / (2 * 16)
        assert per_token[attention] == kv_cache_bytes(args, dtype="fp32")
    # 8 query heads: 8, 2 and 1 key/value heads
    assert per_token["gqa"] == per_token["mha"] / 4 and per_token["mqa"] == per_token["mha"] / 8


@pytest.mark.parametrize("positions", CHOICES["positions"])
def test_decoding_on_the_kv_cache_equals_the_full_pass(positions):
    variant = Variant(positions=positions, norm_position="post")
    model = VariantTransformer(matched_args(BASE, variant), variant).eval()
    tokens = torch.randint(0, 320, (2, 12))
    full = model(tokens)
    model.setup_cache(2, 16)
    prefill = model(tokens[:, :8], 0)
    steps = [model(tokens[:, i:i + 1], i) for i in range(8, 12)]
    assert torch.allclose(torch.cat([prefill, *steps], dim=1), full, atol=1e-4)
    # per-row start positions (continuous batching) place absolute positions per row too
    model.setup_cache(2, 16)
    model(tokens[:, :8], 0)
    assert torch.allclose(model(tokens[:, 8:9], torch.tensor([8, 8]))[:, 0], full[:, 8], atol=1e-4)


def test_one_layer_sees_order_only_through_positions():
    # (deeper causal stacks see order without positions too: earlier tokens attend to fewer tokens)
    tokens = torch.tensor([[5, 6, 7, 8, 9, 10]])
    swapped = torch.tensor([[6, 5, 7, 8, 9, 10]])  # the first two tokens exchanged
    for positions in CHOICES["positions"]:
        variant = Variant(positions=positions)
        model = VariantTransformer(matched_args(BASE.replace(n_layers=1), variant), variant).eval()
        # the last token sees the same set of tokens in another order: only positions can tell them apart
        same = torch.allclose(model(tokens)[0, -1], model(swapped)[0, -1], atol=1e-5)
        assert same == (positions == "none"), positions


@pytest.mark.parametrize("norm_position, activation", [("post", "relu"), ("pre", "gelu")])
def test_layernorm_mlp_block_matches_torch_transformer_layer(norm_position, activation):
    variant = Variant(positions="none", norm="layernorm", norm_position=norm_position, ffn=activation)
    args = BASE.replace(hidden_dim=384)
    ours = VariantBlock(0, args, variant).eval()
    theirs = nn.TransformerEncoderLayer(96, 8, 384, dropout=0.0, activation=activation, batch_first=True,
                                        norm_first=norm_position == "pre", bias=False).eval()
    with torch.no_grad():
        attention = ours.attention
        qkv = [attention.wq.weight, attention.wk.weight, attention.wv.weight]
        theirs.self_attn.in_proj_weight.copy_(torch.cat(qkv))
        theirs.self_attn.out_proj.weight.copy_(attention.wo.weight)
        theirs.linear1.weight.copy_(ours.feed_forward.w1.weight)
        theirs.linear2.weight.copy_(ours.feed_forward.w2.weight)
    x = torch.randn(2, 7, 96)
    identity = torch.ones(1, 7, 6), torch.zeros(1, 7, 6)  # no rotation
    expected = theirs(x, src_mask=nn.Transformer.generate_square_subsequent_mask(7), is_causal=True)
    assert torch.allclose(ours(x, *identity), expected, atol=1e-5)


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """A small prepared story corpus with a 320-token vocabulary."""
    return TokenData(story_data(tmp_path_factory.mktemp("stories"), stories=300, vocab_size=320, seed=1))


@pytest.mark.parametrize("spec", DEFAULT_VARIANTS)
def test_every_variant_learns_the_stories(spec, stories):
    variant = parse_variant(spec)
    model = VariantTransformer(matched_args(BASE.replace(dim=32, n_heads=8, hidden_dim=None, multiple_of=8), variant),
                               variant)
    batches = Batches(stories.tokens("train"), 32, 8, seed=0)
    val_x, val_y = Batches(stories.tokens("val"), 32, 8, seed=0).next()
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.95))
    with torch.no_grad():
        before = model.loss(val_x, val_y).item()
    for _ in range(12):
        loss = model.loss(*batches.next())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.loss(val_x, val_y).item()
    # ln(320) = 5.77 nats at the start; 3.3-3.5 measured after 10 steps
    assert after < before - 1.5, (before, after)
