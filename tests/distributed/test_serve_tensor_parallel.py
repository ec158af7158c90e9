"""`torchrun --nproc-per-node 2 -m llamalab serve MODEL --tp 2`: rank 0 serves, rank 1 follows its model
calls; concurrent clients get the greedy text of the whole model run in one process."""
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import torch

from llamalab.checkpoint import save
from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.tokenizer import load_tokenizer, train_sentencepiece

WORDS = "once upon a time there was a little girl who loved to play in the park with her dog".split()


@torch.no_grad()
def greedy_text(model: Transformer, tokenizer, prompt: str, n_new: int) -> str:
    """argmax of full-sequence logits, one token at a time (no KV cache), up to the first stop id."""
    ids = tokenizer.encode(prompt, bos=True)
    new = []
    for _ in range(n_new):
        token = int(model(torch.tensor([ids + new]))[0, -1].argmax())
        if token in tokenizer.stop_ids:
            break
        new.append(token)
    return tokenizer.decode(new)


def test_torchrun_serve_with_tp_gives_each_client_the_greedy_text(tmp_path):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(300)]
    tokenizer = load_tokenizer(train_sentencepiece(lines, vocab_size=280, out_path=tmp_path / "tokenizer.model"))
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tokenizer.vocab_size,
                                  multiple_of=32, max_seq_len=64)).eval()
    with torch.no_grad():
        model.norm.weight.fill_(20.0)  # peaked logits: no near-ties for the split model's rounding to flip
    path = save(model, tmp_path / "meta", format="meta", shards=2, tokenizer=tmp_path / "tokenizer.model")
    prompts = lines[:4]
    expected = [greedy_text(model, tokenizer, p, 16) for p in prompts]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "llamalab", "serve", str(path), "--tp", "2", "--device", "cpu", "--port", str(port),
               "--slots", "4", "--served-model-name", "m"]
    server = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()[-3000:]
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)

        def complete(prompt):
            return client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0).choices[0].text

        with ThreadPoolExecutor(len(prompts)) as pool:
            assert list(pool.map(complete, prompts)) == expected
    finally:
        server.terminate()
        server.wait(timeout=30)
