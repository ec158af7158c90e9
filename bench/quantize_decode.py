"""CPU decode speed of weight-only int8 / int4 against fp32 and Hugging Face `transformers` `generate`.

    python bench/quantize_decode.py [--preset stories110M] [--new-tokens 64] [--rounds 3] [--group-size 64]

Random weights (the same seed); batch 1; a short prompt, then greedy decoding (a `Generation`, as
`llamalab generate` runs it) on the static KV cache. The model is loaded as `llamalab.load_model` makes it in
fp32, with `quantize="int8"` and with `quantize="int4", group_size=...`; the peer is
`LlamaForCausalLM.generate` on the same shape (fp32, greedy, its own KV cache), measured in the same run.
Each variant runs `--rounds` times interleaved with the others; the best round counts.
"""
from __future__ import annotations

import argparse
import time

import torch

from llamalab import load_model
from llamalab.checkpoint.hf import hf_config
from llamalab.config import ModelArgs
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import LoadedModel

GREEDY = SamplingParams(temperature=0)


def llamalab_decode(loaded: LoadedModel, prompt: torch.Tensor, new_tokens: int) -> float:
    """Tokens/s of greedy decoding (the prefill is not counted)."""
    generation = Generation(loaded.model, prompt.tolist(), new_tokens, GREEDY, step=loaded.decode_step())
    list(generation)
    return (new_tokens - 1) / generation.timings["decode_s"]


@torch.inference_mode()
def hf_decode(hf_model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Tokens/s of `generate` after its first token: (n - 1) / (time(n tokens) - time(1 token))."""
    def run(n):
        start = time.perf_counter()
        hf_model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start
    return (new_tokens - 1) / (run(new_tokens) - run(1))


def hf_model_of(args: ModelArgs):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**hf_config(args))).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="stories110M")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--attention", choices=["sdpa", "reference"], default="sdpa",
                        help="llamalab's attention implementation (reference: matmul-softmax-matmul)")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    options = parser.parse_args()

    args = ModelArgs.from_preset(options.preset)
    common = dict(random_init=True, seed=0, device="cpu", dtype="float32", threads=options.threads,
                  attention=options.attention)
    variants = {
        "fp32": load_model(options.preset, **common),
        "int8": load_model(options.preset, quantize="int8", **common),
        "int4": load_model(options.preset, quantize="int4", group_size=options.group_size, **common),
    }
    runners = {name: (lambda m=m: llamalab_decode(m, prompt, options.new_tokens)) for name, m in variants.items()}
    if not options.no_hf:
        hf = hf_model_of(args)
        runners["hf transformers generate (fp32)"] = lambda: hf_decode(hf, prompt, options.new_tokens)
    prompt = torch.randint(0, args.vocab_size, (1, 8))

    best = {name: 0.0 for name in runners}
    for _ in range(options.rounds):
        for name, run in runners.items():
            best[name] = max(best[name], run())
    print(f"{options.preset}, batch 1, {options.new_tokens} new tokens, {torch.get_num_threads()} threads, "
          f"{options.attention} attention, best of {options.rounds} rounds")
    peer = best.get("hf transformers generate (fp32)")
    for name, tokens_per_s in best.items():
        ratio = f"  {tokens_per_s / peer:5.2f}x hf" if peer else ""
        print(f"  {name:<32} {tokens_per_s:8.1f} tok/s  {tokens_per_s / best['fp32']:5.2f}x fp32{ratio}")


if __name__ == "__main__":
    main()
