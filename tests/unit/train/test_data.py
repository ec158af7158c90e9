import json

import numpy as np
import pytest
import sentencepiece

from llamalab.data import prepare, shards, token_dtype
from llamalab.errors import DataError
from llamalab.train.batches import Batches, TokenData


def reference_stream(tokenizer, texts):
    """BOS ids EOS of every text, concatenated, by the sentencepiece library itself."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    return [t for text in texts for t in [sp.bos_id(), *sp.encode(text), sp.eos_id()]]


@pytest.fixture
def inputs(tmp_path):
    """A folder with a .txt, a .md and a .jsonl of two documents (one blank line), and the texts in order."""
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("The cat sat on the mat.\nIt was happy.", encoding="utf-8")
    (folder / "sub" / "c.md").write_text("A dog ran to the park. ", encoding="utf-8")
    lines = [json.dumps({"text": "Once upon a time, a bird sang."}), "", json.dumps({"text": "The end."})]
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = ["The cat sat on the mat.\nIt was happy.", "Once upon a time, a bird sang.", "The end.",
             "A dog ran to the park. "]  # sorted paths: a.txt, b.jsonl, sub/c.md
    return folder, texts


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_writes_the_tokenizers_ids_split_into_train_and_val(corpus, inputs, tmp_path, workers):
    folder, texts = inputs
    tokenizer = corpus[1]
    meta = prepare([folder], tokenizer, tmp_path / "out", val_fraction=0.25, workers=workers, progress=False)
    expected = reference_stream(tokenizer, texts)
    train = np.fromfile(tmp_path / "out" / "train_000.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "out" / "val_000.bin", dtype=np.uint16)
    assert train.tolist() + val.tolist() == expected
    assert len(val) == round(len(expected) * 0.25)
    assert meta["vocab_size"] == 320 and meta["dtype"] == "uint16" and meta["documents"] == 4
    assert meta["splits"]["train"]["tokens"] == len(train) and meta["splits"]["val"]["tokens"] == len(val)
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta
    assert (tmp_path / "out" / meta["tokenizer"]).read_bytes() == tokenizer.read_bytes()
    loaded = TokenData(tmp_path / "out")
    assert loaded.tokens("train")[0:len(train)].tolist() == train.tolist()


def test_token_ids_take_16_bits_up_to_65536_then_32():
    assert token_dtype(32000) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(128256) == np.uint32


def test_shards_read_back_as_one_stream(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_TOKENS", 1000)
    prepare([corpus[0]], corpus[1], tmp_path / "sharded", val_fraction=0.05, workers=1, progress=False)
    one = TokenData(corpus[2]).tokens("train")
    many = TokenData(tmp_path / "sharded").tokens("train")
    assert len(many.shards) > 10 and len(many) == len(one)
    for start, stop in [(0, 1000), (990, 1010), (2500, 5600), (len(one) - 7, len(one))]:
        assert many[start:stop].tolist() == one[start:stop].tolist()


def test_bad_inputs_are_one_clear_error(corpus, tmp_path):
    tokenizer = corpus[1]
    with pytest.raises(DataError, match="does not exist"):
        prepare([tmp_path / "missing"], tokenizer, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt/.md/.jsonl files"):
        prepare([tmp_path / "empty"], tokenizer, tmp_path / "out")
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="contain no text"):
        prepare([tmp_path / "blank.txt"], tokenizer, tmp_path / "out", progress=False)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:2: expected an object"):
        prepare([tmp_path / "bad.jsonl"], tokenizer, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="no prepared data"):
        TokenData(tmp_path / "out")  # no meta.json was written by the failed runs


def test_a_truncated_shard_is_detected(corpus, tmp_path):
    prepare([corpus[0]], corpus[1], tmp_path / "out", workers=1, progress=False)
    shard = tmp_path / "out" / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="prepare the data again"):
        TokenData(tmp_path / "out")


def windows_of(rows):
    return {tuple(r) for r in rows.tolist()}


def test_an_epoch_deals_every_window_once_then_reshuffles():
    tokens = np.arange(8 * 10 + 1, dtype=np.uint16)  # 10 windows of 8 tokens
    batches = Batches(tokens, seq_len=8, global_batch=3, seed=0)
    seen = [batches.next() for _ in range(3)]  # 9 of the 10 windows; the 10th is skipped
    inputs = np.concatenate([x.numpy() for x, _ in seen])
    assert len(windows_of(inputs)) == 9 and all(row[0] % 8 == 0 for row in inputs.tolist())
    for x, y in seen:
        assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    next_epoch = batches.next()[0]
    assert batches.epoch == 1
    assert windows_of(next_epoch) <= {tuple(range(i * 8, i * 8 + 8)) for i in range(10)}
    assert [x.tolist() for x, _ in seen] != [b[0].tolist() for b in [Batches(tokens, 8, 3, seed=1).next()]]


def test_processes_together_take_the_single_process_batch():
    tokens = np.arange(16 * 40 + 1, dtype=np.uint16)
    whole = Batches(tokens, 16, global_batch=8, seed=3)
    parts = [Batches(tokens, 16, global_batch=8, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(6):  # crosses an epoch boundary (40 windows, 8 a step)
        x, _ = whole.next()
        assert np.concatenate([p.next()[0].numpy() for p in parts]).tolist() == x.tolist()


def test_restored_position_continues_the_same_sequence():
    tokens = np.arange(4 * 30 + 1, dtype=np.uint16)
    run = Batches(tokens, 4, global_batch=4, seed=5)
    for _ in range(9):
        run.next()
    state = dict(run.state_dict())
    expected = [run.next()[0].tolist() for _ in range(5)]
    resumed = Batches(tokens, 4, global_batch=4, seed=5)
    resumed.load_state_dict(state)
    assert [resumed.next()[0].tolist() for _ in range(5)] == expected


def test_a_batch_larger_than_the_data_is_refused():
    with pytest.raises(DataError, match="needs at least 641 training tokens"):
        Batches(np.arange(300, dtype=np.uint16), seq_len=64, global_batch=10, seed=0)
