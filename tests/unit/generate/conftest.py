import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.model import Transformer


def peaked_model(**overrides) -> Transformer:
    """A tiny random model with O(1) logit gaps, so that greedy choices are not decided by rounding noise."""
    args = ModelArgs(**{**dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16,
                               max_seq_len=64), **overrides})
    model = Transformer(args).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embeddings" in name else p.shape[1] ** -0.5)
    return model


@pytest.fixture
def model():
    return peaked_model()
