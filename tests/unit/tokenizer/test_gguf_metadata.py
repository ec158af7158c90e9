"""Our one-pass GGUF metadata reader against gguf-py's GGUFReader (the format's own library)."""
import gguf
import numpy as np
import pytest

from llamalab.errors import TokenizerError
from llamalab.tokenizer.gguf_metadata import has_gguf_key, read_gguf_metadata


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A GGUF file with scalars, strings, a vocabulary-sized string array (non-ASCII pieces too) and number arrays."""
    path = tmp_path_factory.mktemp("gguf") / "meta.gguf"
    rng = np.random.default_rng(0)
    alphabet = list("abcxyzÄé中🙂 ") + ["Ġ", "\n"]
    pieces = ["".join(rng.choice(alphabet, size=rng.integers(0, 9))) for _ in range(5000)]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 3)
    writer.add_float32("llama.rope.freq_base", 10000.5)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", pieces)
    writer.add_array("tokenizer.ggml.token_type", [int(t) for t in rng.integers(1, 6, size=len(pieces))])
    writer.add_array("tokenizer.ggml.scores", [float(s) for s in rng.standard_normal(len(pieces)).astype(np.float32)])
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_tensor("x", np.zeros((2, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_metadata_equals_gguf_readers(gguf_file):
    ours = read_gguf_metadata(gguf_file)
    reader = gguf.GGUFReader(gguf_file)
    theirs = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            assert ours[key] == pytest.approx(value, rel=0, abs=0), key
        else:
            assert ours[key] == value, key
    assert len(ours["tokenizer.ggml.tokens"]) == 5000


def test_has_key_stops_at_the_key_and_answers_for_absent_ones(gguf_file):
    assert has_gguf_key(gguf_file, "tokenizer.ggml.tokens")
    assert has_gguf_key(gguf_file, "tokenizer.chat_template")  # after the arrays: they are walked past
    assert not has_gguf_key(gguf_file, "tokenizer.ggml.merges")


def test_truncated_vocabulary_is_a_tokenizer_error(gguf_file, tmp_path):
    data = gguf_file.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:data.index(b"tokenizer.ggml.token_type") - 40])  # inside the tokens array
    with pytest.raises(TokenizerError, match="truncated"):
        read_gguf_metadata(cut)
