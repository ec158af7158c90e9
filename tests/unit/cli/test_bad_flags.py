"""Issue 21: impossible flag values are one error line and exit 2, never a traceback or an allocation."""
import pytest

from llamalab.checkpoint import save
from llamalab.cli.main import main
from llamalab.cli.serve import API_KEY_ENV, read_api_key
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.model import Transformer
from llamalab.tokenizer import train_sentencepiece


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    texts = ["the cat sat on the mat and the dog ran far away into the woods"] * 50
    return train_sentencepiece(texts, 300, tmp_path_factory.mktemp("tok") / "tokenizer.model")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_file):
    model = Transformer(ModelArgs.from_preset("debug", vocab_size=320))
    return save(model, tmp_path_factory.mktemp("ckpt") / "m", format="native", tokenizer=tokenizer_file)


def run_cli(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of `llamalab argv` run in this process (argparse errors exit through SystemExit)."""
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    return status, err


def assert_one_line_error(status: int, err: str, *needles: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("llamalab ") and "error:" in last, err
    assert all(n in last for n in needles), err


@pytest.mark.parametrize("flags, needle", [
    (["--threads", "-1"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--threads", str(2**64)], "--threads"),
    (["--seed", str(10**20)], "--seed"),
    (["--seed", "1e20"], "--seed"),
    (["--device", "bogus"], "bogus"),
    (["--device", "cuda:99"], "cuda:99"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--top-k", "-3"], "--top-k"),
])
def test_generate_flags(checkpoint, capsys, flags, needle):
    status, err = run_cli(["generate", str(checkpoint), "--prompt", "the cat", "--max-new-tokens", "2", *flags], capsys)
    assert_one_line_error(status, err, needle)


def test_a_cuda_device_this_machine_lacks_is_one_line(checkpoint, capsys):
    import torch

    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"  # no GPU: plain cuda
    status, err = run_cli(["generate", str(checkpoint), "--prompt", "a", "--device", missing], capsys)
    assert_one_line_error(status, err, missing)


@pytest.mark.parametrize("flags, needle", [
    (["--port", "99999"], "--port"),
    (["--port", "-1"], "--port"),
    (["--slots", "1e6"], "--slots"),
    (["--slots", "0"], "--slots"),
    (["--slots", "1000000"], "KV cache"),  # parses, but the cache would not fit in any machine's memory
    (["--max-seq-len", "-5"], "--max-seq-len"),
    (["--max-body-mb", "nan"], "--max-body-mb"),
    (["--api-key", "k", "--api-key-file", "f"], "once"),
])
def test_serve_flags(checkpoint, capsys, flags, needle):
    status, err = run_cli(["serve", str(checkpoint), "--max-seq-len", "128", *flags], capsys)
    assert_one_line_error(status, err, needle)


@pytest.mark.parametrize("shards", ["-1", "0"])
def test_convert_with_no_shards_writes_nothing_and_exits_2(checkpoint, tmp_path, capsys, shards):
    status, err = run_cli(["convert", str(checkpoint), str(tmp_path / "meta"), "--to", "meta", "--shards", shards],
                          capsys)
    assert_one_line_error(status, err, "shards")
    assert not (tmp_path / "meta").exists()


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert read_api_key(None, None) is None
    (tmp_path / "key").write_text("s3cret\n")
    assert read_api_key(None, str(tmp_path / "key")) == "s3cret"
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert read_api_key(None, None) == "from-env"
    assert read_api_key("flag", None) == "flag"
    (tmp_path / "empty").write_text("\n")
    for bad in (str(tmp_path / "empty"), str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match="api-key-file"):
            read_api_key(None, bad)


def test_analyze_plot_with_a_suffix_matplotlib_cannot_write_is_one_line(tmp_path, capsys):
    """Found by the fuzz suite: --plot out.5 was a matplotlib ValueError traceback."""
    status, err = run_cli(["analyze", "--preset", "debug", "--plot", str(tmp_path / "out.5")], capsys)
    assert_one_line_error(status, err, ".5")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, needle", [
    (["--batch-size", str(2**64)], "KV cache"),  # found by the fuzz suite: a TypeError from torch.randint
    (["--batch-size", "10000000"], "KV cache"),
    (["--repeats", "0"], "--repeats"),
    (["--prompt-len", "100", "--new-tokens", "100"], "context"),
])
def test_bench_flags(checkpoint, capsys, flags, needle):
    status, err = run_cli(["bench", str(checkpoint), "--prompt-len", "4", "--new-tokens", "2", "--repeats", "1",
                           *flags], capsys)
    assert_one_line_error(status, err, needle)
