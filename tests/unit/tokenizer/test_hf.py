import json

import pytest
import sentencepiece
import tokenizers

from llamalab.errors import TokenizerError
from llamalab.tokenizer import HFTokenizer, TiktokenTokenizer

TEXTS = ["the cat sat", "  two  spaces ", "café crème brûlée", "東京 and 北京", "emoji 😀🎉!", "digits 123456", ""]


def test_llama2_tokenizer_json_equals_sentencepiece(hf_llama2_dir, sp_model_path):
    """transformers' conversion of the SentencePiece model, read by our wrapper, tokenizes as SentencePiece does."""
    tok = HFTokenizer(hf_llama2_dir / "tokenizer.json")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_path))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids) == (400, 1, 2, None, {2})
    # (not text starting with spaces: transformers' Metaspace does not add SentencePiece's dummy "▁" there)
    for text in TEXTS[2:] + ["a  b  c "]:
        assert tok.encode(text) == [1] + sp.encode(text)
        assert tok.decode(tok.encode(text, eos=True)) == text


def test_llama3_tokenizer_json_equals_tiktoken(hf_llama3_dir, tiktoken_model_path):
    tok = HFTokenizer(hf_llama3_dir / "tokenizer.json")
    reference = TiktokenTokenizer(tiktoken_model_path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (reference.vocab_size, reference.bos_id, reference.eos_id)
    assert tok.stop_ids == reference.stop_ids  # <|end_of_text|> and <|eot_id|>
    for text in TEXTS:
        assert tok.encode(text, eos=True) == reference.encode(text, eos=True)
        assert tok.decode(tok.encode(text)) == text


def test_wrapper_equals_tokenizers_library(hf_llama3_dir):
    tok = HFTokenizer(hf_llama3_dir / "tokenizer.json")
    lib = tokenizers.Tokenizer.from_file(str(hf_llama3_dir / "tokenizer.json"))
    text = "<|start_header_id|>user<|end_header_id|>\n\nhi 😀<|eot_id|>"
    assert tok.encode(text, bos=False, allow_special=True) == lib.encode(text, add_special_tokens=False).ids
    plain = tok.encode(text, bos=False)
    assert tok.special_tokens["<|eot_id|>"] not in plain and tok.decode(plain) == text
    assert tok.id_to_piece(tok.bos_id) == lib.id_to_token(tok.bos_id) == "<|begin_of_text|>"


def test_special_ids_from_config_files(tmp_path, hf_llama3_dir):
    (tmp_path / "tokenizer.json").write_bytes((hf_llama3_dir / "tokenizer.json").read_bytes())
    config = {"bos_token": {"content": "<|begin_of_text|>", "__type": "AddedToken"}, "eos_token": "<|eot_id|>",
              "pad_token": "<|reserved_special_token_0|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    tok = HFTokenizer(tmp_path / "tokenizer.json")
    special = tok.special_tokens
    assert tok.bos_id == special["<|begin_of_text|>"]
    assert tok.eos_id == special["<|eot_id|>"]
    assert tok.pad_id == special["<|reserved_special_token_0|>"]
    assert tok.stop_ids == {special["<|eot_id|>"], 7, 8}


def test_bad_tokenizer_json_is_a_tokenizer_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": "nope"}')
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        HFTokenizer(tmp_path / "tokenizer.json")
