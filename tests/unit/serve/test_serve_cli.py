"""`llamalab serve MODEL` as a user runs it: a saved checkpoint served by its own process, checked against
`llamalab generate` on the same checkpoint (greedy and seeded sampling must give the same text)."""
import json
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from llamalab.checkpoint import save
from llamalab.cli.main import main

PROMPT = "the little girl ran into the woods"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, tokenizer):
    return save(model, tmp_path_factory.mktemp("served") / "tiny", format="native", tokenizer=tokenizer.path)


@pytest.fixture(scope="module")
def served(checkpoint):
    """`llamalab serve CHECKPOINT` on a free port with the default (paged) KV cache, prompts prefilled in chunks of
    4 tokens; yields its base URL and its start-up line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "llamalab", "serve", str(checkpoint), "--port", str(port),
                                "--slots", "4", "--threads", "1", "--prefill-chunk", "4"],
                               stderr=subprocess.PIPE, text=True)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(root + "/health").status_code == 200:
                break
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.1)
    line = next(line for line in process.stderr if line.startswith("llamalab serve: "))  # printed before serving
    yield root + "/v1", line
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.parametrize("sampling", [
    {"temperature": 0},
    {"temperature": 0.8, "top_p": 0.9, "seed": 7},
])
def test_served_text_equals_llamalab_generate(checkpoint, served, sampling, capsys):
    served, _ = served
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in sampling.items()]
    assert main(["generate", str(checkpoint), "--prompt", PROMPT, "--max-new-tokens", "24", "--json", *flags]) == 0
    expected = json.loads(capsys.readouterr().out)
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0, timeout=60)
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, **sampling)
    assert r.choices[0].text == expected["text"]
    assert r.choices[0].finish_reason == expected["finish_reason"]
    assert r.model == "tiny"


def test_the_start_up_line_states_the_memory_plan(served, model):
    _, line = served
    a = model.args
    per_position = 2 * a.n_layers * a.kv_heads * a.head_dim * 4  # k and v of every layer, float32
    blocks = 4 * 128 // 16  # by default on CPU: every slot at the full context (the model's 128), no more
    assert f"KV cache {(blocks + 1) * 16 * per_position / 2**30:.2f} GiB paged = {blocks} blocks of 16 = " in line
    assert f"{blocks * 16:,} tokens (4 of 128 tokens at once" in line
    weights = sum(p.nbytes for p in model.parameters())
    assert f"weights {weights / 2**30:.2f} GiB" in line and "prefix caching on, prefill chunk 4" in line


def test_paged_options_with_the_fixed_cache_are_one_error_line(checkpoint, capsys):
    assert main(["serve", str(checkpoint), "--kv-cache", "fixed", "--kv-cache-memory", "1000000"]) == 2
    err = capsys.readouterr().err
    assert "--kv-cache fixed" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_serve_without_a_model_is_one_error_line(capsys):
    assert main(["serve", "--port", "0"]) == 2
    assert "MODEL" in capsys.readouterr().err
