"""Transformer.forward_packed: decode rows and a prompt chunk with its next token in one forward pass give the logits
of the same writes made one call after another (and both equal the cache-free causal pass), on the static and the
paged cache."""
import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16,
                                 max_seq_len=64)).eval()


def setup(model, paged: bool):
    if paged:
        cache = model.setup_paged_cache(num_blocks=30, block_size=8, batch_size=3, max_seq_len=64)
        for row in range(3):
            assert cache.reserve(row, 64)
    else:
        model.setup_cache(batch_size=3, max_seq_len=64)


@pytest.mark.parametrize("paged", [False, True])
def test_a_chunk_and_decode_rows_packed_equal_separate_calls_and_the_full_pass(model, paged):
    rows = [torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 3)), torch.randint(0, 97, (1, 20))]
    with torch.inference_mode():
        full = [model(tokens)[0, -1] for tokens in (rows[0], rows[1], rows[2][:, :13])]  # no cache: causal passes
        results = []
        for packed in (False, True):
            setup(model, paged)
            model(rows[0][:, :5], 0, first_row=0)
            model(rows[1][:, :2], 0, first_row=1)
            model(rows[2][:, :4], 0, first_row=2)  # the long prompt's first chunk
            chunk = rows[2][:, 4:12]  # its next chunk, then its token 12 with the decoding rows' tokens
            tokens = torch.stack([rows[0][0, 5], rows[1][0, 2], rows[2][0, 12]])[:, None]  # (3, 1)
            start = torch.tensor([5, 2, 12])
            if packed:  # rows 0 and 1 read their own 6 and 3 positions; row 2 its chunk and next token together
                results.append(model.forward_packed([(tokens[:2], start[:2], 0, 6), (rows[2][:, 4:13], 4, 2, None)]))
            else:
                model(chunk, 4, first_row=2, last_only=True)
                results.append(model(tokens, start, kv_len=13, last_only=True)[:, -1])
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1], torch.stack(full), atol=1e-4, rtol=1e-4)
