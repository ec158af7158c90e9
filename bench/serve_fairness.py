"""Fairness of `llamalab serve`: one client's per-token latency alone, and while other clients send the most
expensive valid requests (longest prompt, four ~0.9 MB stop strings, logprobs 20, every remaining token).

    python bench/serve_fairness.py [--preset stories260K] [--hostile 3] [--tokens 32] [--threads 1]

The server (random weights, a SentencePiece tokenizer trained here) runs in this process on loopback. The
peer is the same client's idle latency measured in the same run; the target is a ratio <= 2x. Per-token
latency is the time between the first and the last streamed chunk over the tokens between them.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

from llamalab import load_model
from llamalab.config import ModelArgs
from llamalab.serve import Scheduler, create_app
from llamalab.tokenizer import load_tokenizer, train_sentencepiece

WORDS = "once upon a time there was a little girl named lily who loved to play in the park with her dog".split()


def start_server(preset: str, slots: int) -> tuple[str, uvicorn.Server, int]:
    folder = Path(tempfile.mkdtemp())
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 20
    tokenizer = load_tokenizer(train_sentencepiece(texts, 300, folder / "tokenizer.model"))
    args = ModelArgs.from_preset(preset, vocab_size=tokenizer.vocab_size)
    model = load_model(args, random_init=True, seed=0, device="cpu", dtype="float32").model
    scheduler = Scheduler(model, slots=slots, max_seq_len=model.args.max_seq_len)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(scheduler, tokenizer, "bench"), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1", server, model.args.max_seq_len


def per_token_latency(url: str, tokens: int) -> float:
    """Seconds per token of one streamed completion of exactly `tokens` tokens, after its first chunk."""
    body = {"prompt": "once upon a time", "max_tokens": tokens, "ignore_eos": True, "temperature": 0, "stream": True}
    arrivals = []
    with httpx.Client(timeout=300) as http, http.stream("POST", url + "/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter())
    return (arrivals[-1] - arrivals[0]) / max(len(arrivals) - 1, 1)


def expensive_body(context: int) -> dict:
    """The costliest request the API accepts: longest prompt, 4 stop strings near the body limit, logprobs 20."""
    prompt_tokens = context // 2
    stop = ["x" * 900_000 + str(i) for i in range(4)]  # 3.6 MB of stop strings, under the 4 MB body limit
    return {"prompt": [5 + i % 200 for i in range(prompt_tokens)], "max_tokens": context - prompt_tokens - 1,
            "logprobs": 20, "stop": stop, "ignore_eos": True, "temperature": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stories260K")
    parser.add_argument("--hostile", type=int, default=3, help="clients sending the most expensive requests")
    parser.add_argument("--tokens", type=int, default=32, help="tokens of each measured completion")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    url, server, context = start_server(args.preset, slots=args.hostile + 1)
    per_token_latency(url, 4)  # warm-up
    idle = statistics.median(per_token_latency(url, args.tokens) for _ in range(args.rounds))
    stop, sent = threading.Event(), []
    content = json.dumps(expensive_body(context)).encode()

    def hostile():
        with httpx.Client(timeout=600) as http:
            while not stop.is_set():
                http.post(url + "/completions", content=content, headers={"content-type": "application/json"})
                sent.append(1)

    workers = [threading.Thread(target=hostile, daemon=True) for _ in range(args.hostile)]
    for w in workers:
        w.start()
    time.sleep(1.0)  # the hostile requests are decoding
    loaded = statistics.median(per_token_latency(url, args.tokens) for _ in range(args.rounds))
    stop.set()
    for w in workers:
        w.join()
    server.should_exit = True
    print(f"{args.preset}, {args.hostile} hostile clients ({len(sent)} requests of {len(content) / 2**20:.1f} MB, "
          f"prompt {context // 2} tokens, logprobs 20): per-token latency idle {idle * 1000:.1f} ms, "
          f"under load {loaded * 1000:.1f} ms, ratio {loaded / idle:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
