import base64

import pytest
import tiktoken
import tokenizers

from llamalab.errors import TokenizerError
from llamalab.tokenizer import TiktokenTokenizer

TEXTS = ["the cat sat", "  two  spaces \n\n new line", "café crème brûlée", "東京 and 北京", "emoji 😀🎉!",
         "digits 1234567", "I'M HERE, it's", "Ωmega ß", ""]


def test_special_tokens_sit_at_meta_llama3_ids(llama3_sized_tiktoken_path):
    tok = TiktokenTokenizer(llama3_sized_tiktoken_path)
    special = tok.special_tokens
    assert tok.vocab_size == 128256 and len(special) == 256
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (128000, 128001, None)
    assert special["<|start_header_id|>"] == 128006
    assert special["<|end_header_id|>"] == 128007
    assert special["<|eot_id|>"] == 128009
    assert special["<|reserved_special_token_0|>"] == 128002
    assert special["<|reserved_special_token_4|>"] == 128008
    assert special["<|reserved_special_token_5|>"] == 128010
    assert special["<|reserved_special_token_250|>"] == 128255
    assert tok.stop_ids == {128001, 128009}


def test_wrapper_equals_tiktoken_with_metas_pattern(tiktoken_model_path, bpe_ranks, meta_llama3_pattern):
    tok = TiktokenTokenizer(tiktoken_model_path)
    reference = tiktoken.Encoding("ref", pat_str=meta_llama3_pattern, mergeable_ranks=bpe_ranks, special_tokens={})
    n = len(bpe_ranks)
    for text in TEXTS:
        ids = reference.encode(text)
        assert tok.encode(text) == [n] + ids  # <|begin_of_text|> is the first id after the ranks
        assert tok.encode(text, bos=False, eos=True) == ids + [n + 1]
        assert tok.decode(ids) == text


def test_wrapper_equals_hf_tokenizers_conversion(tiktoken_model_path, hf_llama3_dir):
    tok = TiktokenTokenizer(tiktoken_model_path)
    hf = tokenizers.Tokenizer.from_file(str(hf_llama3_dir / "tokenizer.json"))
    for text in TEXTS:
        assert tok.encode(text, bos=False) == hf.encode(text, add_special_tokens=False).ids
    text = "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    assert tok.encode(text, bos=False, allow_special=True) == hf.encode(text, add_special_tokens=False).ids


def test_special_text_is_ordinary_unless_allowed(tiktoken_model_path):
    tok = TiktokenTokenizer(tiktoken_model_path)
    eot = tok.special_tokens["<|eot_id|>"]
    assert tok.encode("a<|eot_id|>", bos=False, allow_special=True)[-1] == eot
    plain = tok.encode("a<|eot_id|>", bos=False)
    assert eot not in plain and tok.decode(plain) == "a<|eot_id|>"


def test_pieces_are_the_token_bytes(tiktoken_model_path, bpe_ranks):
    tok = TiktokenTokenizer(tiktoken_model_path)
    token, rank = max(bpe_ranks.items(), key=lambda item: item[1])  # the last merge
    assert len(token) > 1 and tok.id_to_piece(rank) == token.decode()
    assert tok.id_to_piece(tok.bos_id) == "<|begin_of_text|>"


@pytest.mark.parametrize("content, message", [
    ("dGhl 0\nnot base64! 1\n", "line 2"),
    ("dGhl 0\naGk= 2\n", "without gaps"),
    ("dGhl\n", "line 1"),
])
def test_malformed_rank_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "tokenizer.model"
    path.write_text(content)
    with pytest.raises(TokenizerError, match=message):
        TiktokenTokenizer(path)


def test_rank_file_format_is_base64_lines(tiktoken_model_path):
    first = tiktoken_model_path.read_text().splitlines()[:2]
    assert first == [f"{base64.b64encode(bytes([0])).decode()} 0", f"{base64.b64encode(bytes([1])).decode()} 1"]
