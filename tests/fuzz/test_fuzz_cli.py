"""Every flag of the model-taking commands fed bad values: exit 2 with one error line (or 0 when the value is
fine), never a traceback, within seconds and bounded memory."""
import argparse
import os
import tempfile
from pathlib import Path

import pytest
from harness import COUNTS, assert_clean_exit, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from llamalab.checkpoint import save
from llamalab.cli.main import build_parser
from llamalab.cli.train import config_from_args
from llamalab.errors import LlamalabError

# examples per command: a value the command accepts runs it whole (eval and bench take seconds on 2 cores)
EXAMPLES = {"generate": 15, "serve": 15, "eval": 5, "bench": 5, "analyze": 15, "convert": 15, "train": 30}
if os.environ.get("FUZZ_EXAMPLES"):  # a longer hunt
    EXAMPLES = dict.fromkeys(EXAMPLES, int(os.environ["FUZZ_EXAMPLES"]))
BAD = ["-1", "0", "-7", "nan", "inf", "-inf", "1e400", "abc", "", "3.5", "2e9", "18446744073709551616",
       "-9223372036854775809", "/dev/null", "../../etc/passwd", "1" * 40]  # no NUL: argv cannot hold one
values = st.sampled_from(BAD) | st.integers(-(2**70), 2**70).map(str) | st.floats().map(str) | st.text(max_size=6)
NOT_FUZZED = {"--tp"}  # > 1 starts a torchrun process group: covered by tests/distributed


def flags_of(command: str) -> list[str]:
    """The flags of a subcommand that take a value."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sorted(a.option_strings[-1] for a in sub._actions
                  if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)
                  and a.option_strings[-1] not in NOT_FUZZED)


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tokenizer_file, tmp_path_factory):
    return save(tiny_model, tmp_path_factory.mktemp("cli") / "m", format="native", tokenizer=tokenizer_file)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text("the cat sat on the mat and the dog ran far away into the woods. " * 8)
    return path


@pytest.fixture
def no_listening(monkeypatch):
    """`serve` builds its server and returns instead of listening forever (its flags are what is fuzzed here)."""
    from llamalab.serve.server import Server

    monkeypatch.setattr(Server, "run", lambda self, host, port: None)


def base_argv(command, checkpoint, text_file, tmp):
    return {
        "generate": ["generate", str(checkpoint), "--prompt", "the cat", "--max-new-tokens", "2"],
        "serve": ["serve", str(checkpoint), "--max-seq-len", "64", "--slots", "2"],
        "eval": ["eval", str(checkpoint), "--data", str(text_file), "--no-progress"],
        "bench": ["bench", str(checkpoint), "--prompt-len", "4", "--new-tokens", "2", "--repeats", "1"],
        "analyze": ["analyze", "--preset", "debug"],
        "convert": ["convert", str(checkpoint), str(tmp / "out"), "--to", "native"],
    }[command]


def fuzz_command(command: str):
    """The test of one command: a flag of it, a bad value, the contract."""
    @settings(settings.get_profile("fuzz"), max_examples=EXAMPLES[command])
    @given(data=st.data())
    def test(checkpoint, text_file, no_listening, data):
        flag = data.draw(st.sampled_from(flags_of(command)))
        value = data.draw(values)
        with tempfile.TemporaryDirectory() as tmp:
            argv = base_argv(command, checkpoint, text_file, Path(tmp)) + [flag, value]
            COUNTS[f"cli {command}"] += 1
            status, err = run_cli(argv)
            assert_clean_exit(status, err, argv)
            if command == "convert" and status != 0:
                assert not any(Path(tmp).iterdir()), f"{argv}: a failed convert left files behind"
    return test


test_generate_flags = fuzz_command("generate")
test_serve_flags = fuzz_command("serve")
test_eval_flags = fuzz_command("eval")
test_bench_flags = fuzz_command("bench")
test_analyze_flags = fuzz_command("analyze")
test_convert_flags = fuzz_command("convert")


@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES["train"])
@given(data=st.data())
def test_bad_train_settings(tmp_path, data):
    """Train's flags are fuzzed as far as its configuration (a run of a value that is fine would take minutes)."""
    flag = data.draw(st.sampled_from([f for f in flags_of("train") if f != "--config"]))
    argv = ["train", "--data", str(tmp_path), flag, data.draw(values)]
    COUNTS["cli train (settings)"] += 1
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 2
        return
    try:
        config_from_args(args)
    except LlamalabError:
        pass
