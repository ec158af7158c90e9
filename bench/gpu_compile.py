"""Compile time of the decode step (issue 19): process start -> the compiled step's first token, in one process.

    python bench/gpu_compile.py --preset llama2-7b --compile-cache DIR [--cache-len 133] [--no-regions] [--json]
    python bench/gpu_compile.py --device cpu --preset debug --backend eager     # seconds: the script on a CPU

Run it twice with the same `--compile-cache` folder: the first (an empty folder) is the cold compile, the second
a later process reusing the on-disk caches (warm). It reports where the seconds went: imports, building the model
(random weights), compiling + the first two tokens, saving the portable cache file; dynamo's and inductor's own
timers (`torch._dynamo.utils.compile_times`), inductor's cache hits and misses and the number of kernels it
generated. The step is `generate/compiled.py`'s, as `llamalab generate --compile` and bench/gpu_decode.py compile it
(same cache length as gpu_decode.py's `--new-tokens` N gives: 5 + N).
"""
from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402
from gpu_common import add_device_arguments, say, setup  # noqa: E402
from torch._dynamo.utils import compilation_time_metrics, counters  # noqa: E402
from torch._inductor import metrics  # noqa: E402

from llamalab import load_model  # noqa: E402
from llamalab.generate.compile_cache import save_compile_cache  # noqa: E402
from llamalab.generate.compiled import compile_decode_step  # noqa: E402
from llamalab.generate.decode import Generation  # noqa: E402
from llamalab.generate.sampling import SamplingParams  # noqa: E402

TIMERS = ("bytecode_tracing", "create_aot_dispatcher_function", "compile_fx_inner", "GraphLowering.codegen",
          "async_compile.wait", "PyCodeCache.load_by_key_path", "AOTAutogradCache.inductor_load")


def timer_totals() -> dict[str, float]:
    """Seconds of dynamo's and inductor's main phases (summed over their calls)."""
    return {name: round(sum(compilation_time_metrics[name]), 3) for name in TIMERS if name in compilation_time_metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama2-7b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--cache-len", type=int, default=133, help="KV cache positions (gpu_decode: 5 + --new-tokens)")
    parser.add_argument("--compile-cache", metavar="DIR", help="the persistent cache folder (default: torch's, /tmp)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--regions", action=argparse.BooleanOptionalAction,
                        help="one compile region per block, or every layer unrolled (default: compile_decode_step's)")
    add_device_arguments(parser)
    options = parser.parse_args()
    device, name, _ = setup(options)
    imported = time.perf_counter()
    loaded = load_model(options.preset, random_init=True, seed=0, device=device, dtype=options.dtype, compile=True,
                        compile_cache=options.compile_cache, compile_backend=options.backend)
    model = loaded.model
    built = time.perf_counter()
    say(f"compiling the {options.preset} decode step on {name} (regions: {options.regions})")
    step = compile_decode_step(model, backend=options.backend, regions=options.regions)
    model.setup_cache(1, min(options.cache_len, model.args.max_seq_len))
    list(Generation(model, [[1, 2, 3, 4, 5]], 2, SamplingParams(temperature=0), step=step))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compiled = time.perf_counter()
    if loaded.compile_cache is not None:
        key = (options.preset, options.dtype, device.type, options.cache_len, options.backend, options.regions)
        save_compile_cache(loaded.compile_cache, repr(key))
    saved = time.perf_counter()
    report = {
        "preset": options.preset, "device": name, "torch": torch.__version__, "backend": options.backend,
        "regions": options.regions, "compile_cache": str(loaded.compile_cache) if loaded.compile_cache else None,
        "import_s": imported - START, "build_s": built - imported, "compile_s": compiled - built,
        "start_to_first_token_s": compiled - START, "save_cache_s": saved - compiled,
        "inductor": {k: v for k, v in counters["inductor"].items() if "cache" in k or k == "cudagraph_skips"},
        "aot_autograd": dict(counters["aot_autograd"]), "kernels_generated": metrics.generated_kernel_count,
        "timers_s": timer_totals(),
    }
    if options.save:
        with open(options.save, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(report) if options.json else
          f"{options.preset} on {name}: start -> first compiled token {report['start_to_first_token_s']:.1f} s "
          f"(import {report['import_s']:.1f}, build {report['build_s']:.1f}, compile {report['compile_s']:.1f}); "
          f"inductor {report['inductor']}; kernels {report['kernels_generated']}; {report['timers_s']}")


if __name__ == "__main__":
    main()
