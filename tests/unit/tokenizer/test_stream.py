import pytest

from llamalab.tokenizer import HFTokenizer, SentencePieceTokenizer, StreamDecoder, TiktokenTokenizer

TEXT = ("the cat sat on a mat.  Then   a naïve café served crème brûlée;\n"
        "東京 and 北京 😀🎉 in 2024, Ж and ß ")


@pytest.fixture(params=["sentencepiece", "tiktoken", "hf-llama2", "hf-llama3"])
def tokenizer(request, sp_model_path, tiktoken_model_path, hf_llama2_dir, hf_llama3_dir):
    return {
        "sentencepiece": lambda: SentencePieceTokenizer(sp_model_path),
        "tiktoken": lambda: TiktokenTokenizer(tiktoken_model_path),
        "hf-llama2": lambda: HFTokenizer(hf_llama2_dir / "tokenizer.json"),
        "hf-llama3": lambda: HFTokenizer(hf_llama3_dir / "tokenizer.json"),
    }[request.param]()


def test_deltas_of_every_prefix_concatenate_to_the_decoded_text(tokenizer):
    ids = tokenizer.encode(TEXT, bos=False)
    assert len(ids) > len(TEXT) // 4  # the text really is cut into many tokens, bytes of characters included
    stream = StreamDecoder(tokenizer)
    text = ""
    for n, token_id in enumerate(ids, start=1):
        delta = stream.push(token_id)
        assert "\ufffd" not in delta  # never half a character
        text += delta
        assert tokenizer.decode(ids[:n]).startswith(text)  # never ahead of the decoded prefix
    text += stream.flush()
    assert text == tokenizer.decode(ids) == TEXT


def test_invalid_utf8_at_the_end_comes_out_on_flush(sp_model_path):
    tokenizer = SentencePieceTokenizer(sp_model_path)
    lead_byte = tokenizer.model.piece_to_id("<0xE6>")  # first byte of a 3-byte character, never finished
    ids = tokenizer.encode("cat", bos=False) + [lead_byte]
    stream = StreamDecoder(tokenizer)
    held = "".join(stream.push(i) for i in ids)
    assert held == "cat"
    assert held + stream.flush() == tokenizer.decode(ids) == "cat\ufffd"
