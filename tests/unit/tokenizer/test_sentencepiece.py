import pytest
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from llamalab.errors import TokenizerError
from llamalab.tokenizer import SentencePieceTokenizer, train_sentencepiece

TEXTS = ["the cat sat", "  two  spaces ", "café crème brûlée", "東京 and 北京", "emoji 😀🎉!", "digits 123456",
         "Ωmega ß", ""]


def test_trained_model_has_llama2_options(sp_model_path):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_model_path.read_bytes())
    spec = proto.trainer_spec
    assert spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
    assert (spec.vocab_size, spec.byte_fallback, spec.split_digits) == (400, True, True)
    assert (spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id) == (0, 1, 2, -1)
    assert proto.normalizer_spec.name == "identity" and not proto.normalizer_spec.remove_extra_whitespaces
    assert len(proto.pieces) == 400
    assert [p.piece for p in proto.pieces[3:259]] == [f"<0x{b:02X}>" for b in range(256)]


def test_wrapper_equals_sentencepiece_library(sp_model_path):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_path))
    tok = SentencePieceTokenizer(sp_model_path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids) == (400, 1, 2, None, {2})
    for text in TEXTS:
        ids = sp.encode(text)
        assert tok.encode(text) == [1] + ids
        assert tok.encode(text, bos=False, eos=True) == ids + [2]
        assert tok.decode(tok.encode(text)) == sp.decode(ids) == text
    assert [tok.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<0x00>", "<0x01>"]


def test_byte_fallback_and_split_digits(sp_model_path):
    tok = SentencePieceTokenizer(sp_model_path)
    unseen = "Ж"  # not in the training text: UTF-8 bytes D0 96
    assert [tok.id_to_piece(i) for i in tok.encode(unseen, bos=False)][-2:] == ["<0xD0>", "<0x96>"]
    digit_pieces = [tok.id_to_piece(i).lstrip("▁") for i in tok.encode("2024", bos=False)]
    assert [p for p in digit_pieces if p] == ["2", "0", "2", "4"]


def test_allow_special_turns_control_text_into_ids(sp_model_path):
    tok = SentencePieceTokenizer(sp_model_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_path))
    assert tok.special_tokens == {"<s>": 1, "</s>": 2}
    assert tok.encode("<s>the cat</s><s>a dog", bos=False, allow_special=True) == (
        [1] + sp.encode("the cat") + [2, 1] + sp.encode("a dog")
    )
    assert 1 not in tok.encode("<s>the cat", bos=False)  # ordinary text by default


def test_train_from_files_equals_train_from_texts(tmp_path, sample_texts):
    texts = sample_texts(300, seed=1)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts), encoding="utf-8")
    from_file = train_sentencepiece([corpus], 300, tmp_path / "a.model")
    from_texts = train_sentencepiece(iter(texts), 300, tmp_path / "b.model")
    assert from_file.read_bytes() == from_texts.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.model", "b.model", "corpus.txt"]  # no temp files left


@pytest.mark.parametrize("vocab_size, message", [(100, "smaller than required"), (100_000, "too high")])
def test_impossible_vocab_size_is_a_clear_error(tmp_path, sample_texts, vocab_size, message):
    with pytest.raises(TokenizerError, match=message):
        train_sentencepiece(sample_texts(50), vocab_size, tmp_path / "x.model")
    assert not (tmp_path / "x.model").exists()


def test_empty_or_missing_training_text_is_an_error(tmp_path):
    with pytest.raises(TokenizerError, match="empty"):
        train_sentencepiece([], 300, tmp_path / "x.model")
    with pytest.raises(TokenizerError, match="missing.txt"):
        train_sentencepiece([tmp_path / "missing.txt"], 300, tmp_path / "x.model")


def test_unreadable_model_is_a_tokenizer_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00 not a protobuf \xff" * 10)
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        SentencePieceTokenizer(bad)
    with pytest.raises(TokenizerError, match="nope.model"):
        SentencePieceTokenizer(tmp_path / "nope.model")
