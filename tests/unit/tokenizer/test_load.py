import json

import pytest

from llamalab.errors import TokenizerError
from llamalab.tokenizer import HFTokenizer, SentencePieceTokenizer, TiktokenTokenizer, load_tokenizer


def copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def test_files_are_told_apart_by_content(tmp_path, sp_model_path, tiktoken_model_path, hf_llama3_dir):
    # the same misleading name for all three: detection reads the content, not the name
    assert isinstance(load_tokenizer(copy(sp_model_path, tmp_path / "a" / "tok.bin")), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(copy(tiktoken_model_path, tmp_path / "b" / "tok.bin")), TiktokenTokenizer)
    assert isinstance(load_tokenizer(copy(hf_llama3_dir / "tokenizer.json", tmp_path / "c" / "tok.bin")), HFTokenizer)


def test_model_folders(tmp_path, sp_model_path, tiktoken_model_path, hf_llama3_dir):
    meta = tmp_path / "meta"
    copy(sp_model_path, meta / "tokenizer.model")
    assert isinstance(load_tokenizer(meta), SentencePieceTokenizer)

    hf = tmp_path / "hf"  # an HF Llama 3 folder: tokenizer.json at the top, Meta's file under original/
    copy(hf_llama3_dir / "tokenizer.json", hf / "tokenizer.json")
    copy(tiktoken_model_path, hf / "original" / "tokenizer.model")
    assert isinstance(load_tokenizer(hf), HFTokenizer)
    (hf / "tokenizer.json").unlink()
    assert isinstance(load_tokenizer(hf), TiktokenTokenizer)


def test_chat_template_beside_the_tokenizer_is_attached(tmp_path, sp_model_path):
    copy(sp_model_path, tmp_path / "tokenizer.model")
    assert load_tokenizer(tmp_path).chat_template is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ messages[0].content }}"}]}))
    assert load_tokenizer(tmp_path).chat_template == "{{ messages[0].content }}"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert load_tokenizer(tmp_path / "tokenizer.model").chat_template == "J"


@pytest.mark.parametrize("content, message", [
    (b"", "not a tokenizer file"),
    (b"\x00\x01garbage", "not a tokenizer file"),
    (b"hello world\n", "not a tokenizer file"),
    (b"\x0a\x05trunc", "not a readable SentencePiece model"),  # looks like a protobuf, cut short
    (b"{not json", "tokenizer.json"),
])
def test_bad_files_raise_tokenizer_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "weird.model"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=message) as error:
        load_tokenizer(path)
    assert "weird.model" in str(error.value)


def test_truncated_sentencepiece_model_is_rejected(tmp_path, sp_model_path):
    data = sp_model_path.read_bytes()
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(path)


def test_missing_paths(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(TokenizerError, match="no tokenizer in this folder"):
        load_tokenizer(tmp_path)
