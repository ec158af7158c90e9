"""bfloat16, the GPU's dtype: logits and KV-cache decoding against float64 references, on the CPU and (marked gpu)
on CUDA, where the compiled decode step (CUDA graphs, tuned reductions, int8 / int4 kernels) is checked too.

Bound: relative L2 error of the logits < 2e-2 against float64. bf16 keeps 8 significant bits (a rounding is
up to 4e-3 relative) and the logits of these 2-layer models gather a few; HF transformers' own bf16 forward
lands at 0.5-0.9% on the CPU, and ours must stay within 1.25x of that.
"""
import copy

import pytest
import torch
from test_hf_llama import CONFIGS, hf_model
from torch._dynamo.utils import counters

from llamalab.checkpoint.hf import from_hf_state_dict
from llamalab.generate.compiled import compile_decode_step
from llamalab.model import Transformer
from llamalab.quantize import quantize_model

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
BOUND = 2e-2


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.cpu().double() - b.double()).norm() / b.double().norm()).item()


def twins(name: str):
    """(HF model, our model holding its weights), both float32 on the CPU."""
    args = CONFIGS[name]
    hf = hf_model(args)
    ours = Transformer(args).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), args), strict=not args.tie_embeddings)
    return hf, ours


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_bf16_logits_are_as_close_to_float64_as_transformers_own(name, device):
    hf, ours = twins(name)
    tokens = torch.randint(0, CONFIGS[name].vocab_size, (2, 48))
    with torch.no_grad():
        reference = copy.deepcopy(hf).double()(tokens).logits
        theirs = hf.to(device, torch.bfloat16)(tokens.to(device)).logits
        got = ours.to(device, torch.bfloat16)(tokens.to(device))
    assert got.dtype == torch.float32
    assert relative_error(got, reference) < min(BOUND, 1.25 * relative_error(theirs, reference) + 1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_bf16_kv_cache_decode_matches_float64_transformers(name, device):
    hf, ours = twins(name)
    tokens = torch.randint(0, CONFIGS[name].vocab_size, (1, 20))
    model = ours.to(device, torch.bfloat16)
    model.setup_cache(batch_size=1, max_seq_len=32)
    with torch.no_grad():
        reference = hf.double()(tokens).logits
        tokens = tokens.to(device)
        got = [model(tokens[:, :15], start_pos=0)] + [model(tokens[:, i:i + 1], start_pos=i) for i in range(15, 20)]
    assert model.layers[0].attention.cache.k.dtype == torch.bfloat16
    assert relative_error(torch.cat(got, 1), reference) < BOUND


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_rows_at_their_own_positions_decode_like_float64(device):
    """Right-padded prompts prefilled together, then each row decoded at its own position (what generation does)."""
    hf, ours = twins("llama3-gqa-scaled")
    lengths, steps = [3, 9], 4
    rows = [torch.randint(0, CONFIGS["llama3-gqa-scaled"].vocab_size, (n + steps,)) for n in lengths]
    model = ours.to(device, torch.bfloat16)
    model.setup_cache(batch_size=2, max_seq_len=32)
    with torch.no_grad():
        references = [hf.double()(row[None]).logits[0, n:] for row, n in zip(rows, lengths)]  # (steps, vocab) each
        prompts = torch.zeros(2, max(lengths), dtype=torch.long)
        for i, (row, n) in enumerate(zip(rows, lengths)):
            prompts[i, :n] = row[:n]
        model(prompts.to(device), start_pos=0)
        got = []
        for step in range(steps):
            tokens = torch.stack([row[n + step] for row, n in zip(rows, lengths)])[:, None]  # (2, 1)
            got.append(model(tokens.to(device), start_pos=torch.tensor(lengths, device=device) + step))
    got = torch.cat(got, dim=1)  # (2, steps, vocab)
    for i, reference in enumerate(references):
        assert relative_error(got[i], reference) < BOUND


@pytest.mark.gpu
@pytest.mark.parametrize("weights", ["bf16", "int8", "int4"])
def test_compiled_cuda_decode_step_matches_float64(weights):
    """inductor with CUDA graphs and coordinate-descent-tuned reductions (int8 dequantized inside them, int4 in
    PyTorch's CUDA kernel) against the same weights in float64 on the CPU."""
    _, ours = twins("llama2-mha")
    model = ours.to("cuda", torch.bfloat16)
    if weights != "bf16":
        quantize_model(model, weights, group_size=64)
    reference_model = copy.deepcopy(model).to("cpu", torch.float64)
    tokens = torch.randint(0, CONFIGS["llama2-mha"].vocab_size, (1, 16))
    model.setup_cache(batch_size=1, max_seq_len=32)
    step = compile_decode_step(model)
    skips = counters["inductor"]["cudagraph_skips"]
    with torch.no_grad():
        reference = reference_model(tokens)[0, 8:]  # (8, vocab)
        model(tokens[:, :8].cuda(), start_pos=0)
        for _ in range(2):  # compile and capture, then replay the CUDA graph
            got = torch.cat([step(tokens[:, i:i + 1].cuda(), i) for i in range(8, 16)])  # (8, vocab)
    assert counters["inductor"]["cudagraph_skips"] == skips  # the step ran as a CUDA graph (the cache is static)
    assert relative_error(got, reference) < BOUND
