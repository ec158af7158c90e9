"""`llamalab generate`, `chat` and `bench` on a tiny checkpoint with a trained SentencePiece tokenizer."""
import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
import torch

from llamalab.checkpoint import load, save
from llamalab.cli.main import main
from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.tokenizer import encode_dialog, load_tokenizer, train_sentencepiece

VOCAB = 300
ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=32, max_seq_len=64)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A native checkpoint of a random model (O(1) logit gaps) with its tokenizer.model beside it."""
    root = tmp_path_factory.mktemp("cli_generate")
    texts = ["the cat sat on the mat and the dog ran far away", "a café in 東京 sells crème brûlée"] * 40
    tokenizer = train_sentencepiece(texts, VOCAB, root / "tok" / "tokenizer.model")
    torch.manual_seed(0)
    model = Transformer(ARGS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embeddings" in name else p.shape[1] ** -0.5)
    return save(model, root / "model", format="native", tokenizer=tokenizer)


def greedy_by_full_forward(model, prompt, n, stop_ids):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([seq]))[0, -1].argmax())
            if token in stop_ids:
                break
            seq.append(token)
    return seq[len(prompt):]


def run_json(capsys, *argv):
    assert main(["generate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json_is_the_greedy_continuation(folder, capsys):
    out = run_json(capsys, str(folder), "--prompt", "the cat", "--temperature", "0", "--max-new-tokens", "12")
    tokenizer = load_tokenizer(folder / "tokenizer.model")
    prompt = tokenizer.encode("the cat", bos=True)
    assert out["prompt_tokens"] == prompt
    assert out["tokens"] == greedy_by_full_forward(load(folder), prompt, 12, tokenizer.stop_ids)
    assert out["text"] == tokenizer.decode(out["tokens"])
    assert out["tokens_per_s"] > 0 and out["timings"]["prefill_s"] > 0


def test_generate_streams_the_same_text_to_the_terminal(folder, capsys):
    argv = [str(folder), "--prompt", "a café", "--temperature", "0", "--max-new-tokens", "10"]
    expected = run_json(capsys, *argv)["text"]
    assert main(["generate", *argv]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected + "\n"
    assert "tokens/s" in captured.err


def test_generate_with_a_seed_is_reproducible(folder, capsys):
    argv = [str(folder), "--prompt", "the dog", "--temperature", "1.0", "--seed", "7", "--max-new-tokens", "16"]
    assert run_json(capsys, *argv)["tokens"] == run_json(capsys, *argv)["tokens"]


def test_generate_random_preset_from_prompt_ids(capsys):
    out = run_json(capsys, "--preset", "debug", "--random-init", "--seed", "0", "--prompt-ids", "1,5,9",
                   "--max-new-tokens", "5", "--temperature", "0")
    assert out["prompt_tokens"] == [1, 5, 9] and len(out["tokens"]) == 5 and out["text"] is None


def test_generate_with_a_draft_model_matches_plain_greedy(folder, capsys):
    argv = [str(folder), "--prompt", "the cat", "--temperature", "0", "--max-new-tokens", "12"]
    assert run_json(capsys, *argv, "--draft", str(folder))["tokens"] == run_json(capsys, *argv)["tokens"]


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "empty"),
    (["--prompt-ids", ",".join(["5"] * 80)], "context"),
    (["--prompt", "hi", "--top-p", "0"], "top_p"),
    (["--prompt", "hi", "--top-p", "1.5"], "top_p"),
    (["--prompt", "hi", "--temperature", "-1"], "temperature"),
    (["--prompt-ids", "1,x"], "integers"),
])
def test_bad_generate_input_is_one_error_line(folder, capsys, argv, message):
    assert main(["generate", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and message in err


def test_unknown_model_path_is_one_error_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err


def test_chat_through_a_pipe_answers_each_turn_and_exits(folder):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "llamalab", "chat", str(folder), "--temperature", "0", "--max-new-tokens", "8",
         "--system", "be brief"],
        input="the cat?\n/reset\na dog?\n/exit\nnever read\n", capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("tokens/s]") == 2 and "[history cleared]" in result.stderr
    assert "Traceback" not in result.stderr
    model, tokenizer = load(folder), load_tokenizer(folder / "tokenizer.model")
    answers = []
    for question in ("the cat?", "a dog?"):  # /reset: the second question starts a new dialog
        dialog = [{"role": "system", "content": "be brief"}, {"role": "user", "content": question}]
        prompt = encode_dialog(tokenizer, dialog)
        answers.append(tokenizer.decode(greedy_by_full_forward(model, prompt, 8, tokenizer.stop_ids)))
    assert result.stdout == "".join(a + "\n" for a in answers)


def test_chat_in_a_terminal_answers_and_exits_cleanly(folder):
    controller, terminal = pty.openpty()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "llamalab", "chat", str(folder), "--temperature", "0", "--max-new-tokens", "6"],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True,
    )
    os.close(terminal)
    seen = b""

    def read_until(marker: bytes, timeout: float = 90):
        nonlocal seen
        deadline = time.time() + timeout
        while marker not in seen and time.time() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                seen += os.read(controller, 4096)
        assert marker in seen, seen.decode(errors="replace")

    try:
        read_until(b"> ")
        os.write(controller, b"the cat?\n")
        read_until(b"tokens/s]")
        os.write(controller, b"/exit\n")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        os.close(controller)
    assert b"Traceback" not in seen


def test_bench_reports_the_bytes_a_decode_step_reads(capsys):
    assert main(["bench", "--preset", "debug", "--random-init", "--prompt-len", "8", "--new-tokens", "8",
                 "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    a = ModelArgs.from_preset("debug")
    kv = a.kv_heads * a.head_dim
    block = 2 * a.dim * a.dim + 2 * a.dim * kv + 3 * a.dim * a.ffn_hidden_dim + 2 * a.dim  # wq wo, wk wv, ffn, norms
    weights = 4 * (a.n_layers * block + a.dim + a.vocab_size * a.dim)  # fp32 blocks, final norm, head
    cache = 4 * 2 * a.n_layers * kv * (8 + 8 // 2)  # keys and values at the mean context of the decode
    assert report["bytes_per_step"] == weights + cache
    assert report["decode_tokens_per_s"] > 0 and report["prefill_tokens_per_s"] > 0
    assert report["bandwidth_fraction"] == pytest.approx(
        report["decode_bandwidth_gb_s"] / report["copy_bandwidth_gb_s"])
