"""Tokenizers trained at test time on a small generated text (no downloads)."""
import random

import pytest

from llamalab.tokenizer import train_sentencepiece

WORDS = ("the cat sat on a mat while the dog ran far away into deep woods where naïve café "
         "owners sold crème brûlée to tired travellers from 東京 and 北京 😀 🎉 in 2024 3.14").split()


def make_texts(n_lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n_lines)]


@pytest.fixture
def sample_texts():
    """make_texts(n_lines, seed): lines of random words with accents, CJK, emoji and digits."""
    return make_texts


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory):
    """A Llama-2-style SentencePiece BPE model with 400 pieces."""
    return train_sentencepiece(make_texts(800), vocab_size=400, out_path=tmp_path_factory.mktemp("sp") / "tokenizer.model")
