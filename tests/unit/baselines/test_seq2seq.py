import math

import torch
from torch import nn

from llamalab.baselines.digits import EOS, PAD, digit_batch, sequence_accuracy, train_digit_task
from llamalab.baselines.layers import sinusoidal_positions
from llamalab.baselines.seq2seq import (
    DecoderLayer,
    EncoderLayer,
    MultiHeadAttention,
    Seq2SeqArgs,
    Seq2SeqTransformer,
    causal_mask,
    padding_mask,
)

ARGS = Seq2SeqArgs(src_vocab_size=128, tgt_vocab_size=64, dim=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.0)


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention):
    """Load our q/k/v/out projections into torch's packed in_proj."""
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.load_state_dict(ours.out_proj.state_dict())


def copy_mlp_and_norms(ours, theirs, norms):
    theirs.linear1.load_state_dict(ours.feed_forward.w1.state_dict())
    theirs.linear2.load_state_dict(ours.feed_forward.w2.state_dict())
    for our_norm, their_norm in norms:
        getattr(theirs, their_norm).load_state_dict(getattr(ours, our_norm).state_dict())


def test_seed_shape_example_gives_target_vocab_logits():
    model = Seq2SeqTransformer(ARGS)
    src, tgt = torch.randint(1, 128, (4, 10)), torch.randint(1, 64, (4, 7))
    assert model(src, tgt).shape == (4, 7, 64)


def test_sinusoidal_table_is_the_papers_formula():
    table = sinusoidal_positions(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert math.isclose(table[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-5)
            assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-5)


def test_attention_matches_torch_multihead_attention_with_padding_and_causal_masks():
    ours = MultiHeadAttention(32, 4)
    theirs = nn.MultiheadAttention(32, 4, batch_first=True)
    copy_attention(ours, theirs)
    x = torch.randn(3, 6, 32)
    tokens = torch.tensor([[5, 6, 7, 8, 9, 4], [5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 0, 0]])
    mask = causal_mask(6) & padding_mask(tokens, 0)
    expected, _ = theirs(x, x, x, key_padding_mask=tokens == 0, attn_mask=~causal_mask(6)[0, 0])
    # the query rows at real positions; padded queries are never read
    real = tokens != 0
    assert torch.allclose(ours(x, x, mask)[real], expected[real], atol=1e-5)


def test_value_projection_is_its_own_weight():
    attention = MultiHeadAttention(16, 2)
    x = torch.randn(1, 4, 16)
    before = attention(x, x, causal_mask(4))
    with torch.no_grad():
        attention.v_proj.weight.mul_(2.0)
        attention.v_proj.bias.mul_(2.0)
    after = attention(x, x, causal_mask(4))
    # doubling the values doubles the attention output before out_proj
    out_bias = attention.out_proj.bias
    assert torch.allclose(after - out_bias, 2 * (before - out_bias), atol=1e-5)


def test_encoder_layer_matches_torch_post_norm_relu_layer():
    ours = EncoderLayer(ARGS).eval()
    theirs = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=False).eval()
    copy_attention(ours.self_attention, theirs.self_attn)
    copy_mlp_and_norms(ours, theirs, [("attention_norm", "norm1"), ("ffn_norm", "norm2")])
    x, tokens = torch.randn(2, 5, 32), torch.tensor([[3, 4, 5, 6, 7], [3, 4, 0, 0, 0]])
    expected = theirs(x, src_key_padding_mask=tokens == 0)
    real = tokens != 0
    assert torch.allclose(ours(x, padding_mask(tokens, 0))[real], expected[real], atol=1e-5)


def test_decoder_layer_matches_torch_post_norm_relu_layer():
    ours = DecoderLayer(ARGS).eval()
    theirs = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=False).eval()
    copy_attention(ours.self_attention, theirs.self_attn)
    copy_attention(ours.cross_attention, theirs.multihead_attn)
    copy_mlp_and_norms(ours, theirs, [("attention_norm", "norm1"), ("cross_attention_norm", "norm2"),
                                      ("ffn_norm", "norm3")])
    y, memory = torch.randn(2, 4, 32), torch.randn(2, 6, 32)
    src = torch.tensor([[3, 4, 5, 6, 7, 8], [3, 4, 5, 0, 0, 0]])
    expected = theirs(y, memory, tgt_mask=~causal_mask(4)[0, 0], memory_key_padding_mask=src == 0)
    assert torch.allclose(ours(y, memory, causal_mask(4), padding_mask(src, 0)), expected, atol=1e-5)


def test_padding_and_future_targets_do_not_change_the_logits():
    model = Seq2SeqTransformer(ARGS).eval()
    src, tgt = torch.randint(1, 128, (2, 5)), torch.randint(1, 64, (2, 6))
    logits = model(src, tgt)
    padded = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    assert torch.allclose(model(padded, tgt), logits, atol=1e-5)
    changed = tgt.clone()
    changed[:, 4:] = 1
    assert torch.allclose(model(src, changed)[:, :4], logits[:, :4], atol=1e-5)


def test_digit_batches_hold_the_answer_between_bos_and_eos():
    src, tgt = digit_batch("sort", 8, 5, torch.Generator().manual_seed(0))
    for s, t in zip(src.tolist(), tgt.tolist()):
        digits = s[: s.index(EOS)]
        assert t[1: t.index(EOS)] == sorted(digits) and set(s[len(digits) + 1:]) <= {PAD}


def test_encoder_decoder_learns_to_reverse_digits():
    model, losses = train_digit_task("reverse", steps=150, batch_size=64, max_digits=5, dim=32, lr=1e-2)
    assert losses[-1] < 0.05 * losses[0]
    # chance is 10^-3 for three digits; 0.98-0.99 measured (seeds 0, 1)
    assert sequence_accuracy(model, "reverse", n=200, max_digits=5) >= 0.9
