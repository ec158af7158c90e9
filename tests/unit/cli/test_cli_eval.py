"""`llamalab eval`: bad input is one line and exit 2 (the numbers are checked against transformers in
tests/parity/test_perplexity.py)."""
import pytest

from llamalab.cli.main import main

DEBUG = ["--preset", "debug", "--random-init", "--device", "cpu", "--no-progress"]  # max_seq_len 128


@pytest.mark.parametrize("extra, message", [
    (["--context", "129"], "--context 129 exceeds the model's max_seq_len=128; use --context 128 or less"),
    (["--context", "64", "--stride", "65"], "--stride must be between 1 and --context (64), got 65"),
    (["--context", "1"], "--context must be at least 2 tokens, got 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--stride", "0"], "--stride must be between 1 and --context (128), got 0"),
])
def test_bad_windows_are_one_line_errors(tmp_path, capsys, extra, message):
    (tmp_path / "text.txt").write_text("some text", encoding="utf-8")
    assert main(["eval", *DEBUG, "--data", str(tmp_path / "text.txt"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llamalab eval: error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("content, message", [
    ("   \n\n", "holds no text to evaluate"),
    ('{"text": "a"}\n{"title": "no text"}\n', 'expected an object with a "text" string field'),
])
def test_unusable_text_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / ("data.jsonl" if content.startswith("{") else "empty.txt")
    path.write_text(content, encoding="utf-8")
    assert main(["eval", *DEBUG, "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_text_without_a_tokenizer_says_to_pass_one(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("some text", encoding="utf-8")
    assert main(["eval", *DEBUG, "--data", str(tmp_path / "text.txt")]) == 2
    assert "--tokenizer PATH" in capsys.readouterr().err
