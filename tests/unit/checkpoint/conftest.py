"""A SentencePiece tokenizer trained at test time (no downloads)."""
import random

import pytest
from checkpoint_models import VOCAB

from llamalab.tokenizer import train_sentencepiece


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory):
    """A SentencePiece BPE tokenizer.model of VOCAB pieces (byte fallback, Llama 2's options)."""
    rng = random.Random(0)
    words = "the cat sat on a mat while a dog ran far into deep woods where café owners sold bread".split()
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
    return train_sentencepiece(texts, VOCAB, tmp_path_factory.mktemp("tok") / "tokenizer.model")
