import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.errors import ContextLengthError
from llamalab.model import Transformer

CONFIGS = {"mha": None, "gqa": 2, "mqa": 1}


def model_for(kind):
    args = ModelArgs(dim=64, n_layers=3, n_heads=4, n_kv_heads=CONFIGS[kind], vocab_size=97, multiple_of=16,
                     max_seq_len=64)
    return Transformer(args).eval()


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("chunks", [[12], [5, 4, 3], [1] * 12])
def test_prefill_then_decode_equals_full_forward(kind, chunks):
    model = model_for(kind)
    tokens = torch.randint(0, 97, (2, 12 + 6))
    full = model(tokens)  # no cache: one causal pass
    model.setup_cache(batch_size=2, max_seq_len=32)
    pieces, pos = [], 0
    for n in chunks + [1] * 6:  # prefill in chunks, then decode token by token
        pieces.append(model(tokens[:, pos:pos + n], start_pos=pos))
        pos += n
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_rows_at_different_positions_decode_like_each_row_alone(kind):
    model = model_for(kind)
    lengths = [3, 9, 6]
    prompts = [torch.randint(0, 97, (n + 4,)) for n in lengths]
    expected = [model(p[None])[0, n:] for p, n in zip(prompts, lengths)]  # logits of the last 4 positions

    model.setup_cache(batch_size=3, max_seq_len=32)
    for row in reversed(range(3)):  # prefill each prompt alone in row 0, then move it to its own row
        p, n = prompts[row], lengths[row]
        model(p[None, :n], start_pos=torch.tensor([0]))
        for layer in model.layers:
            c = layer.attention.cache
            c.k[row], c.v[row] = c.k[0].clone(), c.v[0].clone()
    got = []
    for step in range(4):
        tokens = torch.stack([p[n + step] for p, n in zip(prompts, lengths)])[:, None]
        got.append(model(tokens, start_pos=torch.tensor(lengths) + step))
    got = torch.cat(got, dim=1)
    for row in range(3):
        assert torch.allclose(got[row], expected[row], atol=1e-5)


def test_last_only_returns_the_last_position():
    model = model_for("gqa")
    tokens = torch.randint(0, 97, (2, 7))
    assert torch.allclose(model(tokens, last_only=True), model(tokens)[:, -1:], atol=1e-6)


def test_overflowing_the_cache_is_a_clear_error():
    model = model_for("mha")
    model.setup_cache(batch_size=1, max_seq_len=8)
    with pytest.raises(ContextLengthError, match="KV cache"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ContextLengthError, match="max_seq_len"):
        model.setup_cache(batch_size=1, max_seq_len=1000)


def test_cache_dtype_and_device_chosen_by_caller():
    model = model_for("gqa")
    model.setup_cache(batch_size=2, max_seq_len=16, dtype=torch.bfloat16)
    cache = model.layers[0].attention.cache
    assert cache.k.shape == (2, 2, 16, 16) and cache.k.dtype == torch.bfloat16
    model.clear_cache()
    assert model.cache_shape is None
