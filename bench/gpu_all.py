"""Every GPU measurement of issue 19 plus `pytest -m gpu`, in one call of at most ~8 minutes on one H200.

    python3 bench/gpu_all.py OUT [--budget 470] [--compile-cache DIR]     # on the lent GPU (docs/gpu.md)
    python bench/gpu_all.py OUT --smoke                                   # seconds: the whole flow on a CPU

Each stage is a separate process under its own time limit (and the overall budget): a stage that runs out of time
is killed with its compile workers and loses only itself. After every stage OUT/results.json is rewritten (each
stage's JSON report, its seconds and exit status) and its output appended to OUT/stages.log, so that what finished
comes back even when the call is cut short. At the end a summary against the issue's targets is printed and saved
(OUT/summary.txt), and the compile cache's portable files (`*.artifacts`) are copied to OUT, to be carried into the
next session's call (docs/gpu.md). Stages, in order of priority:

  regions         tests/unit/generate/test_compiled.py: one compile region per block is right with this torch
  tests           pytest -m gpu (every GPU test)
  compile-cold    bench/gpu_compile.py: the 7B decode step compiled in an empty cache folder
  compile-warm    the same in a second process reusing that folder (the target: <= 10 s)
  decode-7b       bench/gpu_decode.py --parts decode: ours (host loop, no host sync, eager), HF eager / static cache
  prefill-7b      --parts prefill: a 2048-token prompt, MFU
  quant-7b        --parts quant: bf16 / int8 / int4 compiled decode
  decode-110m     stories110M decode
  train-1b        bench/gpu_train.py: llama3.2-1b, batch 4 x 2048, bf16, against a plain HF step
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
NEW_TOKENS = 128  # decode length of every decode stage: the compile stages use the same KV cache length
PROMPT_LEN = 5  # gpu_decode.py's
MAX_ARTIFACT_BYTES = 16 * 2**20  # what one file back from the device machine may weigh


@dataclass
class Stage:
    """One measurement: a command (without --save), its time limit in seconds."""

    name: str
    command: list[str]
    limit: float
    json: bool = True  # the command takes --save FILE
    report: dict | None = None
    status: str = "not run"
    seconds: float = 0.0
    tail: list[str] = field(default_factory=list)


def stages(smoke: bool, cache: Path) -> list[Stage]:
    """The stages of a full run on CUDA, or (smoke) the same flow on a CPU with the debug shape and eager backends."""
    python = sys.executable
    if smoke:
        tests = [python, "-m", "pytest", "-m", "gpu", "-q", "--collect-only", "-p", "no:cacheprovider",
                 "tests/unit/analysis/test_memory.py"]
        big, small, train = "debug", "debug", "debug"
        device = ["--device", "cpu", "--threads", "1", "--peak-tflops", "1"]
        decode_extra = ["--new-tokens", "8", "--rounds", "1", "--prefill-len", "16", "--batch-sizes", "2"]
        compile_extra = ["--backend", "eager", "--cache-len", str(PROMPT_LEN + 8)]
        train_extra = ["--batch-size", "2", "--seq-len", "64", "--steps", "2", "--warmup", "1"]
        limits = dict.fromkeys(("tests", "compile-cold", "compile-warm", "decode-7b", "prefill-7b", "quant-7b",
                                "decode-110m", "train-1b"), 120)
    else:
        tests = [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rf",
                 "--continue-on-collection-errors", "tests"]  # a module whose package the image lacks: not the rest
        big, small, train = "llama2-7b", "stories110M", "llama3.2-1b"
        device = []
        decode_extra = ["--new-tokens", str(NEW_TOKENS), "--rounds", "2"]
        compile_extra = ["--cache-len", str(PROMPT_LEN + NEW_TOKENS)]
        train_extra = ["--steps", "8", "--warmup", "2"]
        limits = {"tests": 90, "compile-cold": 90, "compile-warm": 30, "decode-7b": 100, "prefill-7b": 30,
                  "quant-7b": 110, "decode-110m": 50, "train-1b": 100}
    compile_cmd = [python, str(BENCH / "gpu_compile.py"), "--preset", big, "--compile-cache", str(cache), "--json",
                   *device, *compile_extra]
    decode = [python, str(BENCH / "gpu_decode.py"), "--json", *device, *decode_extra]
    regions = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/generate/test_compiled.py"]
    return [
        Stage("regions", regions, 60, json=False),  # the compile regions of this torch are right (else see docs/gpu.md)
        Stage("tests", tests, limits["tests"], json=False),
        Stage("compile-cold", compile_cmd, limits["compile-cold"]),
        Stage("compile-warm", compile_cmd, limits["compile-warm"]),
        Stage("decode-7b", [*decode, "--presets", big, "--parts", "decode"], limits["decode-7b"]),
        Stage("prefill-7b", [*decode, "--presets", big, "--parts", "prefill"] + ([] if smoke else ["--prefill-len",
                                                                                                  "2048"]),
              limits["prefill-7b"]),
        Stage("quant-7b", [*decode, "--presets", big, "--parts", "quant"], limits["quant-7b"]),
        Stage("decode-110m", [*decode, "--presets", small, "--parts", "decode"], limits["decode-110m"]),
        Stage("train-1b", [python, str(BENCH / "gpu_train.py"), "--json", "--preset", train, *device, *train_extra],
              limits["train-1b"]),
    ]


def run_stage(stage: Stage, limit: float, log: Path, scratch: Path, env: dict) -> None:
    """Run one stage in its own process group, killed as a whole at `limit` seconds; keep its report and status."""
    save = scratch / f"{stage.name}.json"
    command = [*stage.command, "--save", str(save)] if stage.json else stage.command
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n===== {stage.name} (limit {limit:.0f} s): {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   cwd=BENCH.parent)
        try:
            code = process.wait(timeout=limit)
            stage.status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the stage and its compile workers
            process.wait()
            stage.status = f"timed out at {limit:.0f} s"
        stage.seconds = time.perf_counter() - start
        out.write(f"===== {stage.name}: {stage.status} after {stage.seconds:.1f} s\n")
    text = log.read_text(errors="replace").splitlines()
    stage.tail = text[-6:]
    if save.exists():
        stage.report = json.loads(save.read_text())


def write_results(out: Path, run: list[Stage], info: dict) -> None:
    """OUT/results.json, rewritten (atomically) after every stage."""
    data = {**info, "stages": {s.name: {"status": s.status, "seconds": round(s.seconds, 1), "report": s.report,
                                        "tail": s.tail if s.status != "ok" else []} for s in run}}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, out / "results.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for results.json, stages.log, summary.txt (e.g. $OUT)")
    parser.add_argument("--budget", type=float, default=470, help="seconds for all stages together")
    parser.add_argument("--compile-cache", type=Path, help="persistent compile cache (default: a new temporary one; "
                                                           "give a carried folder to start warm)")
    parser.add_argument("--smoke", action="store_true", help="the flow on a CPU with the debug shape, in seconds")
    parser.add_argument("--only", nargs="+", help="run only these stages")
    parser.add_argument("--stage-limit", type=float, help="cap every stage's time limit at this many seconds")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_all-"))
    cache = options.compile_cache or scratch / "compile-cache"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LLAMALAB_COMPILE_CACHE": str(cache),
           "TORCHINDUCTOR_CACHE_DIR": str(Path(cache).absolute() / "inductor")}  # HF's compile shares it
    env.pop("TRITON_CACHE_DIR", None)
    log = options.out / "stages.log"
    log.write_text("")
    run = [s for s in stages(options.smoke, cache) if not options.only or s.name in options.only]
    info = {"smoke": options.smoke, "budget_s": options.budget, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "compile_cache": str(cache)}
    deadline = time.perf_counter() + options.budget
    for stage in run:
        left = deadline - time.perf_counter()
        if left < 5:
            stage.status = "skipped: budget spent"
            continue
        limit = min(stage.limit, left, options.stage_limit or left)
        print(f"[gpu_all] {stage.name} (up to {limit:.0f} s)", file=sys.stderr, flush=True)
        run_stage(stage, limit, log, scratch, env)
        write_results(options.out, run, info)
    write_results(options.out, run, info)
    from gpu_summary import summary  # noqa: PLC0415 — beside this script

    text = summary({s.name: s for s in run})
    (options.out / "summary.txt").write_text(text + "\n")
    print(text)
    for path in sorted(Path(cache).glob("*.artifacts"))[:4]:
        if path.stat().st_size <= MAX_ARTIFACT_BYTES:
            shutil.copy(path, options.out / path.name)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
