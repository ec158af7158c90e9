"""`llamalab convert`: every format to every other, tokenizer along; user errors are one line and exit 2."""
import shutil

import gguf
import pytest
import sentencepiece
import torch

from llamalab.checkpoint import load, save
from llamalab.cli.main import main
from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.tokenizer import train_sentencepiece

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32, max_seq_len=64)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A HF checkpoint of a random model, with a SentencePiece tokenizer.model beside it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("src") / "hf"
    texts = ["the quick brown fox jumps over the lazy dog"] * 50 + ["a café in 東京"] * 20
    tokenizer = train_sentencepiece(texts, 300, folder.parent / "tokenizer.model")
    save(Transformer(ARGS).eval(), folder, format="hf", tokenizer=tokenizer)
    return folder


def test_converts_through_every_format_to_the_same_logits(tmp_path, hf_folder, capsys):
    tokens = torch.randint(0, 300, (1, 9))
    expected = load(hf_folder)(tokens)
    src = hf_folder
    for fmt, name in (("meta", "meta"), ("llama2c", "m.bin"), ("gguf", "m.gguf"), ("native", "native"), ("hf", "hf")):
        dst = tmp_path / name
        assert main(["convert", str(src), str(dst), "--to", fmt]) == 0
        assert f"-> {dst} ({fmt}" in capsys.readouterr().out
        assert torch.equal(load(dst)(tokens), expected), fmt
        if fmt == "llama2c":  # the tokenizer went along: llama2.c's tokenizer.bin beside the .bin
            assert (tmp_path / "tokenizer.bin").stat().st_size > 300 * 9
            shutil.copy(src / "tokenizer.model", tmp_path / "tokenizer.model")
        src = dst
    # through the GGUF the vocabulary travels inside the file: the final tokenizer.model is rebuilt from its pieces,
    # scores and types, and encodes as the original
    rebuilt, original = (sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
                         for folder in (tmp_path / "hf", hf_folder))
    for text in ("the quick brown fox", "  a café in 東京 😀", "unseen: ĳ 42"):
        assert rebuilt.encode(text) == original.encode(text)
        assert [rebuilt.id_to_piece(i) for i in range(300)] == [original.id_to_piece(i) for i in range(300)]
    assert len(gguf.GGUFReader(tmp_path / "m.gguf").get_field("tokenizer.ggml.tokens").data) == 300


def test_sharded_and_quantized_outputs(tmp_path, hf_folder):
    argv = ["convert", str(hf_folder), str(tmp_path / "meta"), "--to", "meta", "--shards", "2", "--dtype", "bfloat16"]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == [
        "consolidated.00.pth", "consolidated.01.pth", "params.json", "tokenizer.model"]
    assert main(["convert", str(tmp_path / "meta"), str(tmp_path / "hf"), "--to", "hf", "--shards", "3"]) == 0
    assert (tmp_path / "hf" / "model-00003-of-00003.safetensors").is_file()
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert load(tmp_path / "hf").tok_embeddings.weight.dtype == torch.bfloat16
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "q.gguf"), "--to", "gguf", "--dtype", "q8_0"]) == 0
    assert gguf.GGUFReader(tmp_path / "q.gguf").get_field("general.file_type").contents() == 7  # MOSTLY_Q8_0


@pytest.mark.parametrize("argv_tail, message", [
    (["--to", "hf", "--dtype", "q8_0"], "dtype q8_0 is for gguf and llama2c"),
    (["--to", "gguf", "--shards", "2"], "--shards applies to hf and meta, not gguf"),
    (["--to", "hf", "--llama2c-version", "1"], "--llama2c-version applies to --to llama2c"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, hf_folder, capsys, argv_tail, message):
    assert main(["convert", str(hf_folder), str(tmp_path / "out"), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_source_is_one_line_exit_2_and_no_output(tmp_path, hf_folder, capsys):
    src = tmp_path / "src"
    shutil.copytree(hf_folder, src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["convert", str(src), str(tmp_path / "out.gguf"), "--to", "gguf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llamalab convert: error: ") and "model.safetensors" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
