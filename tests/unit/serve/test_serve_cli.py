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
    """`llamalab serve CHECKPOINT` on a free port, its KV cache paged in 1 MB; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "llamalab", "serve", str(checkpoint), "--port", str(port),
                                "--slots", "4", "--threads", "1", "--kv-cache-memory", "1000000",  # paged,
                                "--prefill-chunk", "4"],  # and chunked
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
    yield root + "/v1"
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.parametrize("sampling", [
    {"temperature": 0},
    {"temperature": 0.8, "top_p": 0.9, "seed": 7},
])
def test_served_text_equals_llamalab_generate(checkpoint, served, sampling, capsys):
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in sampling.items()]
    assert main(["generate", str(checkpoint), "--prompt", PROMPT, "--max-new-tokens", "24", "--json", *flags]) == 0
    expected = json.loads(capsys.readouterr().out)
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0, timeout=60)
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, **sampling)
    assert r.choices[0].text == expected["text"]
    assert r.choices[0].finish_reason == expected["finish_reason"]
    assert r.model == "tiny"


def test_serve_without_a_model_is_one_error_line(capsys):
    assert main(["serve", "--port", "0"]) == 2
    assert "MODEL" in capsys.readouterr().err
