"""Tiny models for the generation tests."""
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


def train_tiny_tokenizer(path, vocab_size: int = 300):
    """A SentencePiece BPE tokenizer (Llama 2 options, byte fallback) trained on a few lines with accents and CJK."""
    from llamalab.tokenizer import train_sentencepiece

    texts = ["the cat sat on the mat and the dog ran far away", "a café in 東京 sells crème brûlée",
             "once upon a time there was a little girl named Lily"] * 40
    return train_sentencepiece(texts, vocab_size, path)
