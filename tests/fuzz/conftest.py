"""Fuzz tests: hypothesis, bounded by example counts (the whole folder stays well under 2 minutes on 2 cores)."""
import os

import pytest
from harness import COUNTS
from hypothesis import HealthCheck, settings

settings.register_profile("fuzz", deadline=None, derandomize=not os.environ.get("FUZZ_EXAMPLES"), database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.write_line("fuzz inputs tried: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path, monkeypatch):
    """Commands fed bad values write wherever a value names (`analyze --plot -1`): in a scratch folder, not the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    """A SentencePiece tokenizer (byte fallback) of 300 pieces, trained here."""
    from llamalab.tokenizer import train_sentencepiece

    texts = ["the cat sat on the mat and the dog ran far away into the deep green woods"] * 60
    return train_sentencepiece(texts, 300, tmp_path_factory.mktemp("fuzz_tok") / "tokenizer.model")


@pytest.fixture(scope="session")
def tiny_model():
    """A random 2-layer model (vocab 300: the tokenizer's, context 64) whose checkpoints the fuzz mutates and runs."""
    import torch

    from llamalab.config import ModelArgs
    from llamalab.model import Transformer

    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=16, max_seq_len=64)
    return Transformer(args).eval().requires_grad_(False)
