"""Serving under load: the paged engine (paged KV cache, prefix caching, chunked prefill) against the fixed-slot
engine as the peer, in one run: throughput at 1/8/32 clients, p50/p99 time to first token (TTFT) and
inter-token latency (ITL), with and without a shared system prompt, and while one long prompt arrives.

    python bench/serve.py [--scenarios throughput system-prompt long-prompt] [--device cuda] [--json]

Each engine is a `python -m llamalab serve MODEL --max-seq-len 4608 --slots 32` process, MODEL a random-weight
checkpoint of the stories15M shape (dim 288, 6 layers, 6 heads, vocabulary 32,000) with a 4,608-token context
written here, beside a SentencePiece tokenizer trained here (400 pieces). Both servers run at once (the idle one
only waits). Prompts are token ids, every request streams exactly its max_tokens (`ignore_eos`; `logprobs: 0` so
that every token is one server-sent event) and the times are taken here, on the client side, per event: TTFT from
sending the request to its first token, ITL between two tokens of one stream. The throughput scenario runs
`--rounds` times per engine, alternating the engines: the target reads the median of the rounds' ratios (each
round's two runs follow each other, so a busy spell on a shared machine slows both alike); the figures printed are
each engine's best round (other processes only ever slow a round down).
Targets (issue 16): with the shared system prompt TTFT >= 3x better than the peer's; p99 ITL of streaming clients
while the long prompt arrives <= 2x their idle p99; throughput at 32 clients no lower than the peer's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from llamalab import checkpoint
from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.tokenizer import train_sentencepiece

WORDS = ("once upon a time there was a little girl named lily who loved to play in the park with her dog max and "
         "the sun was bright and warm so they ran far away into the deep green woods to find a big red ball").split()
SCENARIOS = ("throughput", "system-prompt", "long-prompt")


@dataclass
class Stream:
    """One streamed request as the client saw it: when it was sent and when each token arrived."""

    sent: float
    arrivals: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent

    def gaps(self, since: float = float("-inf"), until: float = float("inf")) -> list[float]:
        """Inter-token latencies whose later token arrived within [since, until]."""
        a = self.arrivals
        return [b - p for p, b in zip(a, a[1:]) if since <= b <= until]


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method), in seconds; nan without values."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def latency(ttfts: list[float], gaps: list[float]) -> dict:
    """p50/p99 of TTFT and ITL, in milliseconds."""
    return {"ttft_p50_ms": percentile(ttfts, 50) * 1e3, "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
            "itl_p50_ms": percentile(gaps, 50) * 1e3, "itl_p99_ms": percentile(gaps, 99) * 1e3,
            "itl_max_ms": max(gaps, default=float("nan")) * 1e3}


def token_prompts(n: int, seed: int, lengths: tuple[int, int], vocab: int) -> list[list[int]]:
    """n prompts of random token ids (past the special ones) with lengths drawn from `lengths`."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(*lengths))] for _ in range(n)]


# -- the server -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_model(args, folder: Path) -> Path:
    """A random-weight checkpoint of the preset's shape with a context of --max-seq-len (the presets' is shorter)."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset(args.preset, max_seq_len=args.max_seq_len))
    return checkpoint.save(model, folder / "model")


def start_server(args, engine_args: list[str], model: Path, tokenizer: Path, port: int, eager: bool = False
                 ) -> subprocess.Popen:
    """A server process; `eager`: without llamalab's C kernels (LLAMALAB_NO_KERNELS), so that it decodes through the
    model's forward as every engine did before the C decode step."""
    command = [sys.executable, "-m", "llamalab", "serve", str(model),
               "--tokenizer", str(tokenizer), "--port", str(port), "--slots", str(args.slots),
               "--max-seq-len", str(args.max_seq_len), "--served-model-name", "bench", "--seed", "0", *engine_args]
    for flag in ("device", "dtype", "threads"):
        if getattr(args, flag):
            command += [f"--{flag}", str(getattr(args, flag))]
    env = {**os.environ, "LLAMALAB_NO_KERNELS": "1"} if eager else None
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the server did not start: {shlex.join(command)}\n{server.stderr.read()[-3000:]}")
        time.sleep(0.2)


def stop_server(server: subprocess.Popen) -> str:
    """Stop the server; its stderr (the start-up line, the access log, any error)."""
    server.terminate()
    try:
        _, stderr = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        _, stderr = server.communicate()
    return stderr


# -- the clients ------------------------------------------------------------------------------------------
async def stream_one(http: httpx.AsyncClient, prompt: list[int], max_tokens: int, into: list[Stream] | None = None
                     ) -> Stream:
    """Send one streamed completion and time each of its tokens (kept in `into` as they come, if given)."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": 0,
            "ignore_eos": True, "stream": True, "logprobs": 0}
    stream = Stream(time.perf_counter())
    if into is not None:
        into.append(stream)
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"HTTP {r.status_code}: {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                now = time.perf_counter()
                event = json.loads(line[6:])
                if "choices" not in event:
                    raise SystemExit(f"the server answered: {event}")
                choice = event["choices"][0]
                if choice.get("finish_reason") == "error":
                    raise SystemExit(f"the server failed a request: {choice}")
                stream.arrivals += [now] * len((choice.get("logprobs") or {}).get("tokens", []))
    if len(stream.arrivals) != max_tokens:
        raise SystemExit(f"asked for {max_tokens} tokens, got {len(stream.arrivals)}")
    return stream


async def closed_loop(http: httpx.AsyncClient, prompts: list[list[int]], clients: int, max_tokens: int
                      ) -> tuple[list[Stream], float]:
    """`clients` clients each sending the next prompt as soon as their previous answer ended; (streams, seconds)."""
    queue, streams = iter(prompts), []

    async def client():
        for prompt in queue:
            await stream_one(http, prompt, max_tokens, streams)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return streams, time.perf_counter() - start


def summary(streams: list[Stream], seconds: float, clients: int) -> dict:
    tokens = sum(len(s.arrivals) for s in streams)
    return {"clients": clients, "requests": len(streams), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            **latency([s.ttft for s in streams], [g for s in streams for g in s.gaps()])}


# -- the scenarios ----------------------------------------------------------------------------------------
async def throughput(http, args, round: int = 0) -> list[dict]:
    """Aggregate tokens/s and latencies of short prompts at each concurrency (prompts new in each round: no prefix
    cache holds them)."""
    rows = []
    for clients in args.clients:
        n = max(args.requests_per_client * clients, args.min_requests)
        prompts = token_prompts(n, seed=clients + 1000 * round, lengths=args.prompt_tokens, vocab=args.vocab)
        rows.append(summary(*await closed_loop(http, prompts, clients, args.max_tokens), clients))
    return rows


async def system_prompt(http, args) -> dict:
    """The same short questions without and with one shared system prompt before them, at each concurrency."""
    system = token_prompts(1, seed=8, lengths=(args.system_prompt, args.system_prompt), vocab=args.vocab)[0]
    await stream_one(http, system + [5, 6, 7], 2)  # one earlier request carried it: what a prefix cache can hold
    rows = []
    for clients in args.system_clients:
        n = max(args.requests_per_client * clients, args.min_requests)
        questions = token_prompts(n, seed=7 + clients, lengths=args.prompt_tokens, vocab=args.vocab)
        tokens = args.system_max_tokens
        without = summary(*await closed_loop(http, questions, clients, tokens), clients)
        shared = summary(*await closed_loop(http, [system + q for q in questions], clients, tokens), clients)
        rows.append({"clients": clients, "without": without, "with": shared})
    return {"system_prompt_tokens": len(system), "rows": rows}


async def long_prompt(http, args) -> dict:
    """Streaming clients' ITL idle, then while one long prompt is prefilled and answered."""
    streams: list[Stream] = []
    prompts = token_prompts(1000, seed=11, lengths=args.prompt_tokens, vocab=args.vocab)

    async def streamer(i: int):
        for prompt in prompts[i::args.streaming_clients]:
            await stream_one(http, prompt, args.stream_tokens, streams)

    tasks = [asyncio.create_task(streamer(i)) for i in range(args.streaming_clients)]
    await asyncio.sleep(args.idle_seconds / 2)  # every client is streaming
    idle_start = time.perf_counter()
    await asyncio.sleep(args.idle_seconds)
    long = token_prompts(1, seed=12, lengths=(args.long_prompt, args.long_prompt), vocab=args.vocab)[0]
    answer = await stream_one(http, long, args.long_tokens)
    done = time.perf_counter()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    idle = [g for s in streams for g in s.gaps(idle_start, answer.sent)]
    loaded = [g for s in streams for g in s.gaps(answer.sent, done)]
    first = answer.arrivals[0]
    behind = [s.ttft for s in streams if answer.sent <= s.sent < first and s.arrivals]  # sent while it was read
    worst = sorted(((b - a, b - answer.sent) for s in streams for a, b in zip(s.arrivals, s.arrivals[1:])
                    if answer.sent <= b <= done), reverse=True)[:5]  # where the longest gaps fall
    return {"streaming_clients": args.streaming_clients, "long_prompt_tokens": len(long),
            "long_ttft_ms": answer.ttft * 1e3, "long_seconds": done - answer.sent,
            "idle": latency([], idle), "loaded": latency([], loaded), "idle_itls": len(idle),
            "loaded_itls": len(loaded), "worst_gaps_ms_at_s": [(g * 1e3, at) for g, at in worst],
            "long_arrivals_s": [t - answer.sent for t in answer.arrivals],
            "behind_long": {"requests": len(behind), **latency(behind, [])}}


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None))


async def throughput_round(url: str, args, round: int) -> list[dict]:
    async with client(url) as http:
        return await throughput(http, args, round)


async def run_scenarios(url: str, args) -> dict:
    """The scenarios other than throughput (which runs in rounds, see `main`), and /health."""
    async with client(url) as http:
        await closed_loop(http, token_prompts(4, seed=0, lengths=args.prompt_tokens, vocab=args.vocab), 2, 8)
        out = {}
        if "system-prompt" in args.scenarios:
            out["system-prompt"] = await system_prompt(http, args)
        if "long-prompt" in args.scenarios:
            out["long-prompt"] = await long_prompt(http, args)
        out["health"] = (await http.get("/health")).json()  # the paged engine's prefix-cache hit rate, preemptions
        return out


def best_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per concurrency level, the round with the most tokens/s (other processes only ever slow a round down), with
    every round's tokens/s beside it."""
    levels = []
    for same_level in zip(*rounds):
        best = max(same_level, key=lambda r: r["tokens_per_s"])
        levels.append({**best, "rounds_tokens_per_s": [r["tokens_per_s"] for r in same_level]})
    return levels


# -- the report -------------------------------------------------------------------------------------------
def targets(results: dict) -> dict:
    """The issue's three targets, each with its figures and whether it is met."""
    paged, peer = results["paged"], results["fixed-slot"]
    out = {}
    if "system-prompt" in paged and "system-prompt" in peer:
        for ours, theirs in zip(paged["system-prompt"]["rows"], peer["system-prompt"]["rows"]):
            ratio = theirs["with"]["ttft_p50_ms"] / ours["with"]["ttft_p50_ms"]
            p99 = theirs["with"]["ttft_p99_ms"] / ours["with"]["ttft_p99_ms"]
            out[f"system-prompt TTFT at {ours['clients']} clients, peer / paged (p50)"] = {
                "value": ratio, "p99": p99, "target": ">= 3", "met": ratio >= 3}
    if "long-prompt" in paged:
        scenario = paged["long-prompt"]
        ratio = scenario["loaded"]["itl_p99_ms"] / scenario["idle"]["itl_p99_ms"]
        out["long-prompt p99 ITL, loaded / idle (paged)"] = {"value": ratio, "target": "<= 2", "met": ratio <= 2}
    if "throughput" in paged and "throughput" in peer:
        most = max(r["clients"] for r in paged["throughput"])
        rate = {name: next(r for r in results[name]["throughput"] if r["clients"] == most)
                for name in ("paged", "fixed-slot")}
        best = rate["paged"]["tokens_per_s"] / rate["fixed-slot"]["tokens_per_s"]
        ratio = statistics.median(a / b for a, b in zip(rate["paged"]["rounds_tokens_per_s"],
                                                          rate["fixed-slot"]["rounds_tokens_per_s"]))
        out[f"throughput at {most} clients, paged / peer (median of the rounds)"] = {
            "value": ratio, "best_rounds": best, "target": ">= 1", "met": ratio >= 1}
    return out


def print_report(report: dict) -> None:
    ms = "TTFT p50 {ttft_p50_ms:8.1f} p99 {ttft_p99_ms:8.1f} ms  ITL p50 {itl_p50_ms:6.1f} p99 {itl_p99_ms:7.1f} ms"
    for name, result in report["results"].items():
        print(f"\n== {name}: {result['command']}")
        for row in result.get("throughput", []):
            rounds = " / ".join(f"{r:.0f}" for r in row["rounds_tokens_per_s"])
            print(f"  throughput {row['clients']:>3} clients: {row['tokens']:6d} tokens in {row['seconds']:6.2f} s = "
                  f"{row['tokens_per_s']:7.1f} tok/s (rounds {rounds})  " + ms.format(**row))
        if "system-prompt" in result:
            s = result["system-prompt"]
            for row in s["rows"]:
                for case in ("without", "with"):
                    print(f"  {case:>7} {s['system_prompt_tokens']}-token system prompt, {row['clients']:>2} clients: "
                          f"{row[case]['tokens_per_s']:7.1f} tok/s  " + ms.format(**row[case]))
        if "long-prompt" in result:
            s = result["long-prompt"]
            print(f"  {s['streaming_clients']} streaming clients, ITL idle: p50 {s['idle']['itl_p50_ms']:.1f} "
                  f"p99 {s['idle']['itl_p99_ms']:.1f} ms ({s['idle_itls']} gaps); while a {s['long_prompt_tokens']}"
                  f"-token prompt arrives: p50 {s['loaded']['itl_p50_ms']:.1f} p99 {s['loaded']['itl_p99_ms']:.1f} "
                  f"max {s['loaded']['itl_max_ms']:.1f} ms ({s['loaded_itls']} gaps); its TTFT "
                  f"{s['long_ttft_ms']:.0f} ms, answered in {s['long_seconds']:.2f} s; {s['behind_long']['requests']} "
                  f"requests sent while it was read: TTFT p50 {s['behind_long']['ttft_p50_ms']:.0f} ms")
    print()
    for name, t in report["targets"].items():
        p99 = f" (p99 {t['p99']:.2f}x)" if "p99" in t else ""
        p99 += f" (best round of each: {t['best_rounds']:.2f}x)" if "best_rounds" in t else ""
        print(f"target {name}: {t['value']:.2f}x{p99} (target {t['target']}x): {'met' if t['met'] else 'MISSED'}")


def engines(args) -> dict[str, list[str]]:
    """The serve flags of each engine: the peer preallocates every slot and prefills whole prompts (the engine
    before issue 16); the paged engine runs with the server's defaults unless told otherwise."""
    paged = ["--kv-cache", "paged"]
    if args.kv_cache_memory:
        paged += ["--kv-cache-memory", args.kv_cache_memory]
    if args.prefill_chunk is not None:
        paged += ["--prefill-chunk", str(args.prefill_chunk)]
    fixed = ["--kv-cache", "fixed", "--prefill-chunk", "0"]
    return {"fixed-slot": fixed + shlex.split(args.fixed_args), "paged": paged + shlex.split(args.paged_args)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--engines", nargs="+", choices=("fixed-slot", "paged"), default=["fixed-slot", "paged"])
    p.add_argument("--preset", default="stories15M")
    p.add_argument("--max-seq-len", type=int, default=4608, help="context per request (the long prompt must fit)")
    p.add_argument("--slots", type=int, default=32, help="rows batched per step (both engines)")
    p.add_argument("--device", help="the server's device (cpu, cuda); default the server's choice")
    p.add_argument("--dtype", help="the server's dtype (default: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--threads", type=int, help="the server's torch threads")
    p.add_argument("--kv-cache-memory", help="the paged engine's --kv-cache-memory (default: the server's)")
    p.add_argument("--prefill-chunk", type=int, help="the paged engine's --prefill-chunk (default: the server's)")
    p.add_argument("--paged-args", default="", help="more serve flags of the paged engine")
    p.add_argument("--fixed-args", default="", help="more serve flags of the fixed-slot engine")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="throughput: concurrency levels")
    p.add_argument("--rounds", type=int, default=5, help="throughput: rounds per engine, alternating")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--min-requests", type=int, default=8, help="requests at least, per level")
    p.add_argument("--max-tokens", type=int, default=64, help="throughput: tokens per answer")
    p.add_argument("--prompt-tokens", type=int, nargs=2, default=(16, 48), help="short prompts' length range")
    p.add_argument("--system-prompt", type=int, default=500, help="tokens of the shared system prompt")
    p.add_argument("--system-clients", type=int, nargs="+", default=[1, 8], help="system-prompt: concurrency levels")
    p.add_argument("--system-max-tokens", type=int, default=16)
    p.add_argument("--streaming-clients", type=int, default=8, help="long-prompt: clients streaming meanwhile")
    p.add_argument("--stream-tokens", type=int, default=128, help="long-prompt: tokens per streamed answer")
    p.add_argument("--idle-seconds", type=float, default=3.0, help="long-prompt: the idle window measured")
    p.add_argument("--long-prompt", type=int, default=4000, help="tokens of the long prompt")
    p.add_argument("--long-tokens", type=int, default=16, help="tokens the long prompt's answer generates")
    p.add_argument("--vocab", type=int, default=400, help="the trained tokenizer's vocabulary")
    p.add_argument("--eager", action="store_true", help="both engines decode through the model's forward (no C step)")
    p.add_argument("--eager-peer", action="store_true",
                   help="the peer decodes through the model's forward: the fixed-slot engine before the C step")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        texts = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(2000)]
        tokenizer = train_sentencepiece(texts, vocab_size=args.vocab, out_path=Path(tmp) / "tokenizer.model")
        model = write_model(args, Path(tmp))
        servers, urls = {}, {}
        try:
            for name in args.engines:  # all started at once: an idle server only waits
                port = free_port()
                eager = args.eager or (args.eager_peer and name == "fixed-slot")
                servers[name] = start_server(args, engines(args)[name], model, tokenizer, port, eager)
                urls[name] = f"http://127.0.0.1:{port}"
            for name in args.engines:
                results[name] = asyncio.run(run_scenarios(urls[name], args))
            if "throughput" in args.scenarios:  # rounds alternate the engines: a busy spell slows both alike
                rounds = {name: [] for name in args.engines}
                for i in range(args.rounds):
                    for name in args.engines:
                        rounds[name].append(asyncio.run(throughput_round(urls[name], args, i)))
                for name in args.engines:
                    results[name]["throughput"] = best_rounds(rounds[name])
        finally:
            logs = {name: stop_server(server) for name, server in servers.items()}
        for name in results:
            eager = args.eager or (args.eager_peer and name == "fixed-slot")
            results[name]["command"] = ("LLAMALAB_NO_KERNELS=1 " if eager else "") + "llamalab serve " + shlex.join(
                engines(args)[name])
            results[name]["startup"] = next((line for line in logs[name].splitlines() if "llamalab serve:" in line),
                                            "")
    report = {"preset": args.preset, "max_seq_len": args.max_seq_len, "slots": args.slots, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "results": results,
              "targets": targets(results) if set(results) == {"paged", "fixed-slot"} else {}}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
