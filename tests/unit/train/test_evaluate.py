"""Sliding-window perplexity on tiny models: the windows, the direct cross-entropy, prepared folders, bytes."""
import json
import math

import numpy as np
import pytest
import sentencepiece
import torch
import torch.nn.functional as F

from llamalab.config import ModelArgs
from llamalab.errors import ConfigError, DataError
from llamalab.model import Transformer
from llamalab.tokenizer import load_tokenizer
from llamalab.train.batches import TokenData
from llamalab.train.evaluate import decoded_bytes, evaluate_text, perplexity, read_eval_text, sliding_windows

VOCAB = 320  # the vocabulary of the `corpus` fixture (tests/unit/train/conftest.py)


def tiny_model(max_seq_len=4096):
    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=16,
                     max_seq_len=max_seq_len)
    return Transformer(args).eval().requires_grad_(False)


def test_windows_of_ten_tokens_by_hand():
    # context 4, stride 2: [0,4) scores 1..3, then each window scores the 2 tokens it adds
    assert sliding_windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert sliding_windows(9, 4, 4) == [(0, 4, 1), (4, 8, 5)]  # disjoint: a window's first token has no context
    assert sliding_windows(3, 8, 4) == [(0, 3, 1)]


@pytest.mark.parametrize("n, context, stride", [(50, 8, 3), (50, 8, 7), (50, 8, 1), (7, 16, 5), (64, 16, 12)])
def test_every_token_is_scored_once_with_context_minus_stride_before_it(n, context, stride):
    scored = []
    for begin, end, first in sliding_windows(n, context, stride):
        assert 0 <= begin < first <= end <= begin + context
        for t in range(first, end):
            assert t - begin >= min(t, context - stride)  # left context inside the window
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_one_window_equals_the_cross_entropy_of_the_full_forward():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (200,))
    with torch.no_grad():
        logits = model(ids[None, :-1])[0]  # (199, vocab)
    expected = F.cross_entropy(logits.double(), ids[1:], reduction="sum").item()
    result = perplexity(model, ids.numpy(), context=256, stride=128, n_bytes=1000)
    assert result.tokens == 199
    assert result.nats == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected / 199), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(expected / math.log(2) / 1000, rel=1e-5)


def test_non_overlapping_windows_score_each_window_from_its_own_start():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (96,))
    expected = 0.0
    with torch.no_grad():
        for begin in range(0, 96, 32):  # stride = context: windows share nothing
            window = ids[begin:begin + 32]
            logits = model(window[None, :-1])[0]
            expected += F.cross_entropy(logits.double(), window[1:], reduction="sum").item()
    for batch_size in (1, 2):
        result = perplexity(model, ids, context=32, stride=32, batch_size=batch_size)
        assert result.tokens == 96 - 3  # a window's first token is input only
        assert result.nats == pytest.approx(expected, rel=1e-5)


def test_prepared_folder_gives_its_val_tokens(corpus):
    stories, tokenizer, folder = corpus
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    texts = [json.loads(line)["text"] for line in stories.read_text(encoding="utf-8").splitlines() if line.strip()]
    stream = [t for text in texts for t in [sp.bos_id(), *sp.encode(text), sp.eos_id()]]
    n_val = len(TokenData(folder).tokens("val"))
    text = read_eval_text(folder, None)
    assert text.ids.tolist() == stream[len(stream) - n_val:]
    assert read_eval_text(folder, None, split="train").ids.tolist() == stream[:len(stream) - n_val]
    assert read_eval_text(folder, None, max_tokens=50).ids.tolist() == stream[len(stream) - n_val:][:50]


def test_jsonl_documents_are_separated_by_eos_and_their_bytes_counted(corpus, tmp_path):
    _, tokenizer, _ = corpus
    texts = ["The cat sat on the mat.", "Une café crème à Zürich, 東京.", "The end."]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n\n", encoding="utf-8")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    tok = load_tokenizer(tokenizer)
    text = read_eval_text(path, tok)
    bos = [sp.bos_id()]
    assert text.ids.tolist() == [*bos, *sp.encode(texts[0]), sp.eos_id(), *bos, *sp.encode(texts[1]), sp.eos_id(),
                                 *bos, *sp.encode(texts[2])]
    assert text.n_bytes == sum(len(t.encode("utf-8")) for t in texts) and text.documents == 3
    assert decoded_bytes(text.ids, tok) == text.n_bytes  # what prepared folders and --max-tokens rely on
    cut = len(sp.encode(texts[0])) + 3  # BOS ids EOS BOS, then 4 tokens of the second document
    first = read_eval_text(path, tok, max_tokens=cut + 4)
    second_start = sp.decode(first.ids[cut:].tolist())
    assert first.documents == 2 and second_start and texts[1].startswith(second_start)
    assert first.n_bytes == len(texts[0].encode("utf-8")) + len(second_start.encode("utf-8"))


def test_bad_inputs_are_clear_errors(corpus, tmp_path):
    model = tiny_model(max_seq_len=64)
    tok = load_tokenizer(corpus[1])
    (tmp_path / "empty.txt").write_text("  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no text"):
        read_eval_text(tmp_path / "empty.txt", tok)
    with pytest.raises(DataError, match="does not exist"):
        read_eval_text(tmp_path / "missing.txt", tok)
    with pytest.raises(ConfigError, match="max_seq_len=64"):
        perplexity(model, np.arange(100), context=65)
    with pytest.raises(ConfigError, match="--stride"):
        perplexity(model, np.arange(100), context=32, stride=33)
    with pytest.raises(DataError, match="at least 2 tokens"):
        perplexity(model, np.arange(1), context=32)
    with pytest.raises(DataError, match="vocabulary"):
        perplexity(model, np.array([1, VOCAB]), context=32)


def test_evaluate_text_scores_a_file_in_one_call_as_its_full_forward(corpus, tmp_path):
    _, tokenizer, _ = corpus
    texts = ["The cat sat on the mat.", "A dog ran far away."]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n", encoding="utf-8")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    ids = torch.tensor([sp.bos_id(), *sp.encode(texts[0]), sp.eos_id(), sp.bos_id(), *sp.encode(texts[1])])
    model = tiny_model(max_seq_len=64)  # context 64 by default: one window holds the whole text
    with torch.no_grad():
        expected = F.cross_entropy(model(ids[None, :-1])[0].double(), ids[1:], reduction="sum").item()
    result, text = evaluate_text(model, load_tokenizer(tokenizer), path)
    assert (result.context, result.stride, result.tokens, text.documents) == (64, 32, len(ids) - 1, 2)
    assert result.nats == pytest.approx(expected, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(expected / math.log(2) / sum(len(t) for t in texts), rel=1e-5)
    with pytest.raises(ConfigError, match="--context 65 exceeds"):  # the windows are checked before any reading
        evaluate_text(model, None, tmp_path / "not-there.txt", context=65)
