"""CPU decode speed of llamalab against Hugging Face `transformers` on the same weights, in the same run.

    python bench/decode_cpu.py [--presets stories15M stories110M] [--threads 2] [--new-tokens 128] [--rounds 3]
                               [--rows 1 4 16] [--no-hf] [--compile]

Batch 1, float32, random weights, a short prompt, greedy decoding. The peer is `LlamaForCausalLM.generate`
holding exactly our weights (converted with `to_hf_state_dict`). Decode speed excludes the prefill on both
sides: ours is (n - 1) / decode time, HF's is (n - 1) / (time(n tokens) - time(1 token)). Every variant
runs `--rounds` times, interleaved with the others so that load from other processes hits all of them
alike; the best round counts. Both peers run under the same, default OpenMP settings, as a user's process does:
idle OpenMP threads spin a while before they sleep, which the compiled step (one parallel loop per op, hundreds
per token) needs: with OMP_WAIT_POLICY=PASSIVE it runs ~3x slower. Set PASSIVE only when the cores are shared
with other busy processes (spinning threads then wait for a time slice at every parallel op, for both peers).
Variants: `eager` (the model as built, no fast path), then as `llamalab.load_model` makes them: `c-step` (the
default: `decode_step()` is quantize/native_decode.py's C step, the whole token in one C call), `int8`
(`quantize="int8"`: per-channel int8, which the C step does not cover: `column_major_weights` + PyTorch's int8
kernel), and with `--compile`: `compiled` (`compile=True`: `matvec_linears` and `compile_decode_step`) and
`int8 compiled` (both). The peers: HF generate in the same run (batch 1), and llama2.c `run.c`'s figures measured on
this machine (issue 18; not installed here, so not the same run): stories15M 483 tokens/s on 2 threads, 290 on 1;
stories110M 65 on 2. `--rows 4 16`: batched decoding (tokens of all rows per second) of eager and c-step.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from llamalab.checkpoint.hf import hf_config, to_hf_state_dict
from llamalab.checkpoint.weights import model_state_dict
from llamalab.config import ModelArgs
from llamalab.generate.decode import Generation, eager_step
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import load_model
from llamalab.model import Transformer

GREEDY = SamplingParams(temperature=0)
SEED = 0
RUN_C = {("stories15M", 2): 483.0, ("stories15M", 1): 290.0, ("stories110M", 2): 65.0}  # tokens/s (issue 18)


def llamalab_tokens_per_s(model: Transformer, step, prompt: list[int], new_tokens: int, rows: int = 1) -> float:
    """Decoded tokens of all rows per second (the first token of each row comes out of the prefill)."""
    generation = Generation(model, [prompt] * rows, new_tokens, GREEDY, step=step)
    list(generation)
    return rows * (new_tokens - 1) / generation.timings["decode_s"]


@torch.inference_mode()
def hf_tokens_per_s(hf_model, prompt: list[int], new_tokens: int) -> float:
    ids = torch.tensor([prompt])

    def seconds(n: int) -> float:
        start = time.perf_counter()
        hf_model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    return (new_tokens - 1) / (seconds(new_tokens) - seconds(1))


def hf_twin(model: Transformer):
    """`LlamaForCausalLM` holding the same weights (HF's half-split rotary layout)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(**hf_config(model.args))).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model_state_dict(model), model.args), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return hf


def variants(model: Transformer, preset: str, compile: bool, cache_len: int) -> dict:
    """name -> (model, decode step) of each llamalab configuration measured: `model` as built, then the same seeded
    weights as llamalab.load_model prepares them."""
    options = {"c-step": {}, "int8": {"quantize": "int8"}}
    if compile:
        options |= {"compiled": {"compile": True}, "int8 compiled": {"quantize": "int8", "compile": True}}
    out = {"eager": (model, eager_step(model))}
    for name, chosen in options.items():
        loaded = load_model(preset, random_init=True, seed=SEED, device="cpu", dtype="float32", **chosen)
        out[name] = (loaded.model, loaded.decode_step(1, cache_len))
    return out


def bench_preset(preset: str, new_tokens: int, rounds: int, compile: bool, rows: list[int], with_hf: bool
                 ) -> dict[str, float]:
    torch.manual_seed(SEED)  # the weights load_model(..., seed=SEED) makes
    model = Transformer(ModelArgs.from_preset(preset)).eval().requires_grad_(False)
    prompt = torch.randint(3, model.args.vocab_size, (16,)).tolist()
    runs = {}
    if with_hf:
        hf = hf_twin(model)
        with torch.inference_mode():
            ours, theirs = model(torch.tensor([prompt])), hf(torch.tensor([prompt])).logits
        assert torch.allclose(ours, theirs, atol=1e-4), "the HF twin does not compute the same logits"
        runs["hf"] = lambda: hf_tokens_per_s(hf, prompt, new_tokens)
    for name, (m, step) in variants(model, preset, compile, len(prompt) + new_tokens).items():
        m.setup_cache(1, len(prompt) + new_tokens)
        llamalab_tokens_per_s(m, step, prompt, 4)  # warm-up (compilation)
        runs[name] = lambda m=m, step=step: llamalab_tokens_per_s(m, step, prompt, new_tokens)
        if name in ("eager", "c-step"):
            for n in rows:
                if n > 1:
                    runs[f"{name} x{n} rows"] = lambda m=m, step=step, n=n: llamalab_tokens_per_s(m, step, prompt,
                                                                                               new_tokens, n)
    best = {name: 0.0 for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["stories15M", "stories110M"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure the torch.compile'd decode step")
    parser.add_argument("--rows", type=int, nargs="+", default=[1], help="batched decoding too (e.g. 1 4 16)")
    parser.add_argument("--no-hf", action="store_true", help="leave out the HF transformers peer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"float32 (int8: weight-only), {args.threads} threads, {args.new_tokens} new tokens, "
          f"best of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f} at start")
    for preset in args.presets:
        best = bench_preset(preset, args.new_tokens, args.rounds, args.compile, args.rows, not args.no_hf)
        hf = best.pop("hf", None)
        if hf:
            print(f"{preset:<12} HF transformers generate {hf:8.1f} tokens/s")
        run_c = RUN_C.get((preset, args.threads))
        for name, tps in best.items():
            ratios = f"  {tps / hf:5.2f}x HF" if hf and "rows" not in name else ""
            if run_c and "rows" not in name:
                ratios += f"  {tps / run_c:5.2f}x run.c ({run_c:.0f}, recorded)"
            print(f"{preset:<12} llamalab {name:<20} {tps:8.1f} tokens/s{ratios}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
