"""Serving throughput: aggregate generated tokens/s with 8 and 32 concurrent clients against 32 requests
served one after another (one client), by the same `llamalab serve` process (random weights, stories15M shape).

    python bench/serve.py [--preset stories15M] [--requests 32] [--max-tokens 128] [--stream]

The server runs in its own process (`python -m llamalab serve ... --random-init`) with a SentencePiece
tokenizer trained here; every request generates exactly --max-tokens tokens (`ignore_eos`), so the
concurrency levels do the same work. The peer is the sequential run; the target is >= 5x at 32 clients.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from llamalab.tokenizer import train_sentencepiece

WORDS = ("once upon a time there was a little girl named lily who loved to play in the park with her dog max and "
         "the sun was bright and warm so they ran far away into the deep green woods to find a big red ball").split()


def texts(n: int, seed: int, words: tuple[int, int]) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(preset: str, tokenizer: Path, port: int, slots: int, threads: int | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "llamalab", "serve", "--preset", preset, "--random-init",
               "--tokenizer", str(tokenizer), "--port", str(port), "--slots", str(slots),
               "--served-model-name", "bench"]
    if threads:
        command += ["--threads", str(threads)]
    server = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.2)


async def serve_all(client: openai.AsyncOpenAI, prompts: list[str], concurrency: int, max_tokens: int,
                    stream: bool) -> tuple[int, float]:
    """Send every prompt with at most `concurrency` in flight; return (generated tokens, seconds)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> int:
        async with gate:
            options = dict(model="bench", prompt=prompt, max_tokens=max_tokens, temperature=1.0, seed=0,
                           extra_body={"ignore_eos": True})
            if not stream:
                return (await client.completions.create(**options)).usage.completion_tokens
            chunks = await client.completions.create(stream=True, stream_options={"include_usage": True}, **options)
            return [c async for c in chunks][-1].usage.completion_tokens

    start = time.perf_counter()
    tokens = await asyncio.gather(*(one(p) for p in prompts))
    return sum(tokens), time.perf_counter() - start


async def measure(url: str, prompts: list[str], args) -> dict[str, float]:
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    await serve_all(client, prompts[:2], 2, 8, args.stream)  # warm-up
    rates = {}
    for name, concurrency in [("sequential", 1), *((f"{c} clients", c) for c in args.clients if c > 1)]:
        tokens, seconds = await serve_all(client, prompts, concurrency, args.max_tokens, args.stream)
        rates[name] = tokens / seconds
        label = f"1 client ({len(prompts)} requests one after another)" if concurrency == 1 else name
        print(f"{label:>42}: {tokens} tokens in {seconds:6.2f} s = {rates[name]:7.1f} tokens/s "
              f"({rates[name] / rates['sequential']:.2f}x sequential)", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="stories15M")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32], help="concurrency levels besides 1")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt-words", type=int, nargs=2, default=(8, 48), help="prompt length range, in words")
    parser.add_argument("--stream", action="store_true", help="stream the answers (server-sent events)")
    parser.add_argument("--threads", type=int, help="the server's torch threads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_sentencepiece(texts(2000, seed=0, words=(4, 16)), vocab_size=400,
                                        out_path=Path(tmp) / "tokenizer.model")
        port = free_port()
        server = start_server(args.preset, tokenizer, port, slots=max(args.clients), threads=args.threads)
        try:
            print(f"llamalab serve --preset {args.preset} --random-init, {args.requests} requests x "
                  f"{args.max_tokens} tokens, {'streamed' if args.stream else 'whole'} answers, "
                  f"{os.cpu_count()} CPUs", flush=True)
            prompts = texts(args.requests, seed=1, words=args.prompt_words)
            rates = asyncio.run(measure(f"http://127.0.0.1:{port}/v1", prompts, args))
        finally:
            server.terminate()
            server.wait(timeout=30)
    best = max(args.clients)
    ratio = rates[f"{best} clients"] / rates["sequential"]
    print(f"ratio at {best} clients vs sequential: {ratio:.2f}x (target >= 5x)")


if __name__ == "__main__":
    main()
