"""GPU decode speed (issue 10): llamalab's compiled decode step against Hugging Face `transformers` `generate`
(eager, and with its static cache, which compiles the forward) and against the memory-bandwidth limit, all
measured in the same run; int8 / int4 weight-only decode; batched decode; the prefill of a long prompt.

    python bench/gpu_decode.py [--presets stories110M llama2-7b] [--parts decode quant batch prefill]
                               [--new-tokens 200] [--batch-sizes 8 32] [--prefill-len 2048] [--json] [--save FILE]
    python bench/gpu_decode.py --device cpu --preset debug       # seconds: the script end to end on a CPU

Random weights in bfloat16, greedy decoding of a 5-token prompt. Decode tokens/s excludes the prefill on
both sides: ours is rows × (n - 1) / the decode time of a `Generation` (what `llamalab generate --compile`
runs: a host sync per token to check stops); "no host sync" feeds the compiled step its own argmax on the
device (gpt-fast's loop); HF's is timed between its first and last streamed token. Parts:
  decode   batch 1: llamalab compiled / compiled with no host sync / eager, HF eager, HF static cache
  quant    batch 1, compiled: bf16, int8, int4 (`load_model(quantize=...)`, int4 group size 128)
  batch    compiled bf16 decode of `--batch-sizes` rows: throughput, MFU, MBU
  prefill  one eager forward pass of a `--prefill-len`-token prompt into the KV cache: tokens/s, MFU
MBU = bytes a step must read (weights + the KV cache at the mean context, `analysis.inference_bytes`) ×
steps/s / the device-to-device copy bandwidth measured in this run, so batch-1 MBU is the fraction of the
bandwidth limit. MFU = model FLOPs (`analysis.decode_flops` / `prefill_flops`) per second / the datasheet
bf16 peak (`analysis.accelerator_for_device`, or `--peak-tflops`; none on a CPU). Every llamalab model is
`llamalab.load_model(preset, random_init=True, seed=0, compile=True, ...)`, as `llamalab generate --compile`
loads it, the compiled steps its `decode_step(batch, cache_len)`. Each variant runs
`--rounds` times, rounds interleaved, the best counts; `compile_s` is the wall time of `decode_step` and a
first short generation (compilation and CUDA-graph capture). The compiled step uses inductor on CUDA; on a
CPU `--backend eager` (dynamo's capture alone: CPU decode speed is bench/decode_cpu.py's job).
"""
from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import transformers
from gpu_common import add_device_arguments, emit, release, say, setup, synchronize
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

from llamalab import load_model
from llamalab.analysis import decode_flops, inference_bytes, mbu, prefill_flops
from llamalab.checkpoint.hf import hf_config
from llamalab.config import ModelArgs
from llamalab.generate.benchmark import copy_bandwidth
from llamalab.generate.decode import Generation, Step, eager_step
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import LoadedModel
from llamalab.model import Transformer

GREEDY = SamplingParams(temperature=0)
PARTS = ("decode", "quant", "batch", "prefill")
PROMPT_LEN = 5
GROUP_SIZE = 128  # int4 group size, the one `analysis.weight_bytes` counts


@dataclass
class Row:
    """One measured variant."""

    preset: str
    part: str
    variant: str
    batch: int
    tokens_per_s: float
    compile_s: float | None = None
    mbu: float | None = None  # of the measured copy bandwidth
    mfu: float | None = None  # of the bf16 peak FLOP/s


# -- the measurements ----------------------------------------------------------------------------------
def generation_tokens_per_s(model: Transformer, step: Step, prompts: list[list[int]], new_tokens: int) -> float:
    """Decode tokens/s of a greedy `Generation`, all rows together (each row's first token comes from the prefill)."""
    generation = Generation(model, prompts, new_tokens, GREEDY, step=step)
    list(generation)
    return len(prompts) * (new_tokens - 1) / generation.timings["decode_s"]


@torch.inference_mode()
def step_loop_tokens_per_s(model: Transformer, step: Step, prompt: list[int], new_tokens: int) -> float:
    """Decode tokens/s of the step fed its own argmax on the device: no host sync until the end."""
    device = model.device
    token = model(torch.tensor([prompt], device=device), 0, last_only=True)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    synchronize(device)
    start = time.perf_counter()
    for position in range(len(prompt), len(prompt) + new_tokens - 1):
        token = step(token, position).argmax(-1, keepdim=True)
    synchronize(device)
    return (new_tokens - 1) / (time.perf_counter() - start)


class TokenClock(BaseStreamer):
    """The wall-clock time of every `put`: generate hands each new token over with `.cpu()`, a device sync."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.inference_mode()
def hf_tokens_per_s(hf: LlamaForCausalLM, prompt: list[int], new_tokens: int, static: bool) -> float:
    """Decode tokens/s of HF greedy `generate`, from its first new token to its last."""
    clock = TokenClock()
    hf.generate(torch.tensor([prompt], device=hf.device), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, pad_token_id=0, streamer=clock, cache_implementation="static" if static else None)
    return (len(clock.times) - 2) / (clock.times[-1] - clock.times[1])  # put 0 is the prompt, put 1 the prefill's token


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_of(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The best tokens/s of each run over `rounds` rounds, the runs interleaved within a round."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best


def matmul_flops(device: torch.device, n: int, repeats: int = 10) -> float:
    """FLOP/s of the best of five batches of `repeats` bf16 (n × n) @ (n × n) products on random data."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b  # warm-up: library handles, kernel choice
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


# -- one preset ----------------------------------------------------------------------------------------
class PresetBench:
    """The parts of the benchmark on one model shape, sharing the model and its compiled batch-1 step."""

    def __init__(self, preset: str, options: argparse.Namespace, device: torch.device, bandwidth: float,
                 peak_flops: float | None):
        self.preset, self.options, self.device = preset, options, device
        self.bandwidth, self.peak_flops = bandwidth, peak_flops
        self.args = ModelArgs.from_preset(preset)
        self.new_tokens = min(options.new_tokens, self.args.max_seq_len - PROMPT_LEN)
        self.context = PROMPT_LEN + self.new_tokens // 2  # the mean number of positions a decode step attends
        generator = torch.Generator().manual_seed(0)
        self.prompts = torch.randint(1, self.args.vocab_size, (max(options.batch_sizes), PROMPT_LEN),
                                     generator=generator).tolist()
        self.loaded = self.load("bf16")
        self.model = self.loaded.model
        self.steps: dict[tuple[str, int], tuple[Transformer, Step, float]] = {}  # (weights, batch) -> compiled
        self.graph_skips = 0  # compiled steps inductor did not capture as CUDA graphs (it says why on stderr)

    def info(self) -> dict:
        bytes_per_token = inference_bytes(self.args, 1, self.context, "bf16")
        return {"prompt_len": PROMPT_LEN, "new_tokens": self.new_tokens, "context_len": self.context,
                "bytes_per_token": bytes_per_token, "limit_tokens_per_s": self.bandwidth / bytes_per_token,
                "cudagraph_skips": self.graph_skips}

    def row(self, part: str, variant: str, tokens_per_s: float, batch: int = 1, weights: str = "bf16",
            compile_s: float | None = None) -> Row:
        flops = decode_flops(self.args, self.context).total * tokens_per_s
        return Row(self.preset, part, variant, batch, tokens_per_s, compile_s,
                   mbu(tokens_per_s, self.args, self.context, self.bandwidth, batch, weights),
                   flops / self.peak_flops if self.peak_flops else None)

    def load(self, weights: str) -> LoadedModel:
        """The seed-0 random model in bfloat16, weight-only quantized to int8 / int4 unless `weights` is bf16."""
        quantize = None if weights == "bf16" else weights
        return load_model(self.preset, random_init=True, seed=0, device=self.device, dtype=torch.bfloat16,
                          quantize=quantize, group_size=GROUP_SIZE if quantize == "int4" else None, compile=True,
                          compile_backend=self.options.backend)

    def compiled(self, weights: str, batch: int) -> tuple[Transformer, Step, float]:
        """(model, compiled step, compile seconds) of the model in `weights` at `batch` rows, made once."""
        if (weights, batch) not in self.steps:
            if weights != "bf16":
                say(f"[{self.preset}] loading it quantized to {weights}")
            loaded = self.loaded if weights == "bf16" else self.load(weights)
            say(f"[{self.preset}] compiling the {weights} decode step, batch {batch}")
            skips = counters["inductor"]["cudagraph_skips"]
            start = time.perf_counter()
            step = loaded.decode_step(batch, PROMPT_LEN + self.new_tokens)
            list(Generation(loaded.model, self.prompts[:batch], 4, GREEDY, step=step))  # CUDA graphs are captured
            compile_s = time.perf_counter() - start
            self.graph_skips += counters["inductor"]["cudagraph_skips"] - skips
            self.steps[weights, batch] = (loaded.model, step, compile_s)
        return self.steps[weights, batch]

    def decode(self) -> list[Row]:
        model, step, compile_s = self.compiled("bf16", 1)
        prompt, n = self.prompts[0], self.new_tokens
        config = LlamaConfig(**hf_config(self.args))
        with torch.device(self.device):
            hf = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
        say(f"[{self.preset}] HF warm-up (its static cache compiles)")
        hf_compile_s = seconds(lambda: hf_tokens_per_s(hf, prompt, n, static=True))
        hf_tokens_per_s(hf, prompt, 4, static=False)
        say(f"[{self.preset}] timing batch-1 decode, {self.options.rounds} rounds")
        best = best_of({
            "llamalab compiled": lambda: generation_tokens_per_s(model, step, [prompt], n),
            "llamalab compiled, no host sync": lambda: step_loop_tokens_per_s(model, step, prompt, n),
            "llamalab eager": lambda: generation_tokens_per_s(model, eager_step(model), [prompt], n),
            "hf eager": lambda: hf_tokens_per_s(hf, prompt, n, static=False),
            "hf static cache": lambda: hf_tokens_per_s(hf, prompt, n, static=True),
        }, self.options.rounds)
        compile_times = {"llamalab compiled": compile_s, "llamalab compiled, no host sync": compile_s,
                         "hf static cache": hf_compile_s}
        return [self.row("decode", name, tps, compile_s=compile_times.get(name)) for name, tps in best.items()]

    def quant(self) -> list[Row]:
        variants = {weights: self.compiled(weights, 1) for weights in ("bf16", "int8", "int4")}
        prompt, n = self.prompts[0], self.new_tokens
        say(f"[{self.preset}] timing bf16 / int8 / int4 decode, {self.options.rounds} rounds")
        best = best_of({weights: lambda m=m, s=s: generation_tokens_per_s(m, s, [prompt], n)
                        for weights, (m, s, _) in variants.items()}, self.options.rounds)
        rows = [self.row("quant", f"llamalab compiled {weights}", best[weights], weights=weights,
                         compile_s=variants[weights][2]) for weights in variants]
        for weights in ("int8", "int4"):  # free the quantized copies
            del self.steps[weights, 1]
        return rows

    def batch(self) -> list[Row]:
        rows = []
        for batch in self.options.batch_sizes:
            model, step, compile_s = self.compiled("bf16", batch)
            say(f"[{self.preset}] timing batch-{batch} decode")
            timed = functools.partial(generation_tokens_per_s, model, step, self.prompts[:batch], self.new_tokens)
            best = best_of({"": timed}, self.options.rounds)[""]
            rows.append(self.row("batch", "llamalab compiled", best, batch=batch, compile_s=compile_s))
        return rows

    @torch.inference_mode()
    def prefill(self) -> list[Row]:
        length = min(self.options.prefill_len, self.args.max_seq_len)
        self.model.setup_cache(1, length)
        tokens = torch.randint(1, self.args.vocab_size, (1, length), device=self.device)

        def run():
            self.model(tokens, 0, last_only=True)
            synchronize(self.device)

        run()  # warm-up: kernel choice, cuBLAS workspace
        say(f"[{self.preset}] timing the prefill of {length} tokens")
        best = min(seconds(run) for _ in range(self.options.rounds))
        flops = prefill_flops(self.args, length).total / best
        return [Row(self.preset, "prefill", f"llamalab eager, {length} tokens", 1, length / best,
                    mfu=flops / self.peak_flops if self.peak_flops else None)]


def ratios(rows: list[Row], limit: float) -> dict[str, float]:
    """The issue's ratios, for those of the variants that ran."""
    tps = {(r.part, r.variant, r.batch): r.tokens_per_s for r in rows}
    ours = tps.get(("decode", "llamalab compiled", 1))
    bf16 = tps.get(("quant", "llamalab compiled bf16", 1))
    pairs = {
        "compiled / bandwidth limit": (ours, limit),
        "compiled / hf eager": (ours, tps.get(("decode", "hf eager", 1))),
        "compiled / hf static cache": (ours, tps.get(("decode", "hf static cache", 1))),
        "no host sync / compiled": (tps.get(("decode", "llamalab compiled, no host sync", 1)), ours),
        "int8 / bf16": (tps.get(("quant", "llamalab compiled int8", 1)), bf16),
        "int4 / bf16": (tps.get(("quant", "llamalab compiled int4", 1)), bf16),
    }
    return {name: a / b for name, (a, b) in pairs.items() if a and b}


def print_table(report: dict) -> None:
    peak = f"{report['peak_tflops']:.0f} TFLOP/s" if report["peak_tflops"] else "no known peak"
    print(f"{report['device']}, torch {report['torch']}, transformers {report['transformers']}: copy "
          f"{report['copy_bandwidth_gb_s']:.0f} GB/s, bf16 matmul {report['matmul_tflops']:.1f} TFLOP/s "
          f"(MFU against {peak})")
    percent = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print(f"{'preset':<12} {'part':<8} {'variant':<34} {'batch':>5} {'tokens/s':>10} {'MBU':>6} {'MFU':>6} "
          f"{'compile s':>9}")
    for r in report["rows"]:
        compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        print(f"{r['preset']:<12} {r['part']:<8} {r['variant']:<34} {r['batch']:>5} {r['tokens_per_s']:>10.1f} "
              f"{percent(r['mbu']):>6} {percent(r['mfu']):>6} {compile_s:>9}")
    for preset, info in report["presets"].items():
        print(f"{preset}: bandwidth limit {info['limit_tokens_per_s']:.0f} tokens/s "
              f"({info['bytes_per_token'] / 1e9:.3f} GB per token at context {info['context_len']}); "
              f"compiled steps not run as CUDA graphs: {info['cudagraph_skips']}")
        for name, value in report["ratios"][preset].items():
            print(f"  {name:<28} {value:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", "--preset", nargs="+", default=["stories110M", "llama2-7b"])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens decoded per row")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--prefill-len", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", help="torch.compile backend (default: inductor on CUDA, eager on a CPU)")
    add_device_arguments(parser)
    options = parser.parse_args()
    device, name, peak_flops = setup(options)
    options.backend = options.backend or ("inductor" if device.type == "cuda" else "eager")

    say(f"measuring copy bandwidth and matmul rate on {name}")
    bandwidth = copy_bandwidth(device, megabytes=2048 if device.type == "cuda" else 64)
    report = {"device": name, "torch": torch.__version__, "transformers": transformers.__version__, "dtype": "bfloat16",
              "copy_bandwidth_gb_s": bandwidth / 1e9, "peak_tflops": peak_flops / 1e12 if peak_flops else None,
              "matmul_tflops": matmul_flops(device, 8192 if device.type == "cuda" else 256) / 1e12,
              "backend": options.backend, "presets": {}, "rows": [], "ratios": {}}
    for preset in options.presets:
        bench = PresetBench(preset, options, device, bandwidth, peak_flops)
        rows = [row for part in PARTS if part in options.parts for row in getattr(bench, part)()]
        info = bench.info()
        report["presets"][preset] = info
        report["rows"] += [asdict(r) for r in rows]
        report["ratios"][preset] = ratios(rows, info["limit_tokens_per_s"])
        del bench
        release(device)
    emit(report, options, print_table)


if __name__ == "__main__":
    main()
