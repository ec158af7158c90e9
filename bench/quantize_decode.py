"""CPU decode speed of weight-only int8 / int4 against fp32 and Hugging Face `transformers` `generate`.

    python bench/quantize_decode.py [--preset stories110M] [--new-tokens 64] [--rounds 3] [--group-size 64]

Random weights; batch 1; a short prompt, then greedy decoding on the static KV cache. The same
model is measured in fp32, after `quantize_model(..., "int8")` and after `quantize_model(..., "int4")`;
the peer is `LlamaForCausalLM.generate` on the same shape (fp32, greedy, its own KV cache), measured
in the same run. Each variant runs `--rounds` times interleaved with the others; the best round counts.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.quantize import quantize_model


@torch.inference_mode()
def llamalab_decode(model: Transformer, prompt: torch.Tensor, new_tokens: int) -> float:
    """Tokens/s of greedy decoding (the prefill is not counted)."""
    model.setup_cache(batch_size=1, max_seq_len=prompt.shape[1] + new_tokens)
    token = model(prompt, start_pos=0, last_only=True)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    start = time.perf_counter()
    for pos in range(prompt.shape[1], prompt.shape[1] + new_tokens - 1):
        token = model(token, start_pos=pos, last_only=True)[:, -1].argmax(-1, keepdim=True)
    return (new_tokens - 1) / (time.perf_counter() - start)


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

    config = LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_hidden_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
        tie_word_embeddings=args.tie_embeddings,
    )
    return LlamaForCausalLM(config).eval()


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
    if options.threads:
        torch.set_num_threads(options.threads)

    args = ModelArgs.from_preset(options.preset)
    torch.manual_seed(0)
    fp32 = Transformer(args, attention_impl=options.attention).eval()
    variants = {
        "fp32": fp32,
        "int8": quantize_model(copy.deepcopy(fp32), "int8"),
        "int4": quantize_model(copy.deepcopy(fp32), "int4", group_size=options.group_size),
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
