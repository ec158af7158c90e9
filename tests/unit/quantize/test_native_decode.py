"""The C decode step (quantize/native_decode.py) against the readable model: the same greedy tokens over 40 steps and
logits within float32 summation-order error (5e-5 of the largest logit), for float32 weights, GGUF's Q4_0 / Q4_1 / Q8_0
blocks, SmolLM2's GGUF, and a paged KV cache read and written in place."""
import copy
import random

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as GGML
from torch import nn

from llamalab import ModelArgs
from llamalab.generate.decode import Generation, eager_step
from llamalab.generate.engine import Engine, Sequence
from llamalab.generate.sampling import SamplingParams
from llamalab.inference import load_model
from llamalab.model import Transformer
from llamalab.quantize import native
from llamalab.quantize.blocks import BlockEmbedding, BlockLinear
from llamalab.quantize.native import kernel_quantized_linears
from llamalab.quantize.native_decode import NativeStep, huge_pages, native_step, supported

pytestmark = pytest.mark.skipif(native.kernels() is None, reason="no C compiler on this machine")

GREEDY = SamplingParams(temperature=0)
PROMPTS = [[5, 17, 3, 40, 2, 9, 11], [7, 1], [30, 31, 32, 33]]  # different lengths: each row at its own position


def tiny_model(seed: int = 0, dim: int = 80) -> Transformer:
    """Random weights large enough for decisive logits; grouped-query heads; dim not a multiple of 16 (vector tails)."""
    torch.manual_seed(seed)
    args = ModelArgs(dim=dim, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_seq_len=64)
    model = Transformer(args).eval().requires_grad_(False)
    for p in model.parameters():
        p.mul_(5)  # std 0.1 weights, norms at 5: logits spread over several units
    return model


def decode(model: Transformer, step, prompts: list[list[int]], steps: int) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy tokens of each prompt and the logits of every decode step (steps, rows, vocab)."""
    logits = []

    def recording(tokens, start_pos, kv_len=None):
        logits.append(step(tokens, start_pos, kv_len))
        return logits[-1]

    generation = Generation(model, prompts, steps, GREEDY, step=recording)
    list(generation)
    return [c.tokens for c in generation.completions], torch.stack(logits)


def assert_same_decoding(reference: Transformer, fast: Transformer, prompts, steps: int = 40, rtol: float = 5e-5):
    expected, expected_logits = decode(reference, eager_step(reference), prompts, steps)
    step = native_step(fast)
    assert isinstance(step, NativeStep)
    tokens, logits = decode(fast, step, prompts, steps)
    assert tokens == expected
    scale = expected_logits.abs().max().item()
    assert scale > 1  # decisive logits, not a flat near-zero distribution
    assert (logits - expected_logits).abs().max().item() <= rtol * scale


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one row", "rows at their own positions"])
def test_float32_step_decodes_like_the_model(prompts):
    model = tiny_model()
    assert supported(model)
    assert_same_decoding(model, model, prompts)


def test_threads_do_not_change_the_result():
    model = tiny_model(1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, one_logits = decode(model, native_step(model), PROMPTS, 12)
        torch.set_num_threads(2)
        two, two_logits = decode(model, native_step(model), PROMPTS, 12)
    finally:
        torch.set_num_threads(threads)
    assert one == two and torch.equal(one_logits, two_logits)  # each output row is summed by one thread


def blocks_of(weight: torch.Tensor, kind: str) -> BlockLinear:
    """A BlockLinear of gguf.quants' `kind` blocks of `weight` (out, in), which then holds gguf's dequantized values."""
    blocks = gguf.quants.quantize(weight.numpy(), GGML[kind])
    layer = BlockLinear(weight.shape[1], weight.shape[0], kind)
    layer.blocks = torch.from_numpy(blocks)
    weight.copy_(torch.from_numpy(gguf.quants.dequantize(blocks, GGML[kind])))
    return layer


def quantized_twin(model: Transformer) -> Transformer:
    """A copy of `model` reading GGUF blocks for every weight matrix (Q4_0 and Q4_1 in turn for the blocks' layers, Q8_0
    for the head, Q4_1 for the embedding), with `model`'s weights set to exactly what those blocks stand for."""
    twin = copy.deepcopy(model)
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    for i, (name, linear) in enumerate(linears):
        layer = blocks_of(linear.weight, "Q8_0" if name == "output" else ("Q4_0", "Q4_1")[i % 2])
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent), child, layer)
    twin.tok_embeddings = BlockEmbedding(blocks_of(model.tok_embeddings.weight, "Q4_1"))
    assert kernel_quantized_linears(twin) == 3 * 7 + 2
    return twin


def test_gguf_blocks_step_decodes_like_the_float_model_of_the_same_weights():
    model = tiny_model(2, dim=64)  # the C step reads blocks of 32 inputs
    model.args.tie_embeddings = False
    model.output.weight = nn.Parameter(model.output.weight.detach().clone(), requires_grad=False)  # its own head
    twin = quantized_twin(model)
    assert supported(twin)
    assert_same_decoding(model, twin, PROMPTS)


def test_gguf_blocks_step_of_many_rows_decodes_like_the_float_model():
    """Rows 4 at a time through one pass over each row of blocks (cpu_rows.h blocks_many), then 1, 2 or 3: 4 + 2
    and 4 + 4 + 1 rows at their own positions."""
    model = tiny_model(4, dim=64)
    model.args.tie_embeddings = False
    model.output.weight = nn.Parameter(model.output.weight.detach().clone(), requires_grad=False)
    twin = quantized_twin(model)
    prompts = [[3 + i, 1 + 2 * i][: 1 + i % 2] + [7] * (i % 3) for i in range(9)]
    assert_same_decoding(model, twin, prompts[:6], steps=12)
    assert_same_decoding(model, twin, prompts, steps=12)


def test_more_rows_than_one_call_takes_decode_like_the_model():
    model = tiny_model(3)
    rows = [[1, 2, 3 + i % 5] for i in range(native.MAX_ROWS + 3)]  # two C calls per step: 32 rows, then 3
    expected, expected_logits = decode(model, eager_step(model), rows, 4)
    tokens, logits = decode(model, native_step(model), rows, 4)
    assert tokens == expected
    assert (logits - expected_logits).abs().max().item() <= 5e-5 * expected_logits.abs().max().item()


def paged_decode(model: Transformer, step, prompts: list[list[int]], steps: int):
    """Greedy tokens and per-step logits of the prompts decoded together on a paged cache of 4-position blocks handed
    out in a shuffled order, each prompt admitted alone (so that a later one shares an earlier one's prefix blocks);
    also the cache."""
    cache = model.setup_paged_cache(num_blocks=96, block_size=4, batch_size=len(prompts), max_seq_len=64,
                                    prefix_caching=True)
    random.Random(0).shuffle(cache.free)  # blocks scattered over the pool, not in order
    logits = []

    def recording(tokens, start_pos, kv_len=None):
        logits.append(step(tokens, start_pos, kv_len))
        return logits[-1]

    engine = Engine(model, len(prompts), 64, step=recording)
    seqs = [Sequence(p, steps, GREEDY) for p in prompts]
    with torch.inference_mode():
        for seq in seqs:
            engine.admit([seq])
        while not all(s.done for s in seqs):
            engine.step()
    return [s.output for s in seqs], torch.stack(logits), cache


def test_step_reads_and_writes_a_paged_cache_in_place():
    """The C step over a paged cache (scattered blocks, a prompt's prefix blocks shared by two rows, rows at their own
    positions, grouped-query heads): the greedy tokens of the readable model on a static cache, logits within 5e-5."""
    model = tiny_model(10)  # its greedy choices are never near-ties (margin > 0.02): the same tokens either way
    shared = [5, 17, 3, 40, 2, 9, 11, 8, 21]  # two full blocks of 4 shared, then each row its own
    prompts = [shared + [1, 2], shared + [30], [7, 1], [30, 31, 32, 33, 34, 35]]
    expected, expected_logits = decode(model, eager_step(model), prompts, 40)
    step = native_step(model)
    tokens, logits, cache = paged_decode(model, step, prompts, 40)
    assert step.cache is cache  # the C step read this paged cache (not the model's forward)
    assert cache.prefix_hits == 2 and cache.row_blocks[1][:2] == cache.row_blocks[0][:2]
    assert any(b != a + 1 for a, b in zip(cache.row_blocks[0], cache.row_blocks[0][1:]))  # not one run of blocks
    assert tokens == expected
    assert (logits - expected_logits).abs().max().item() <= 5e-5 * expected_logits.abs().max().item()


def test_what_the_step_does_not_cover_goes_through_the_model():
    """More than one token a row (a prompt chunk) is the model's forward."""
    model = tiny_model(3)
    step = native_step(model)
    model.setup_cache(1, 16)
    with torch.inference_mode():
        logits = step(torch.tensor([[4, 5, 6]]), 0)
        model.setup_cache(1, 16)
        assert torch.equal(logits, model(torch.tensor([[4, 5, 6]]), 0, last_only=True)[:, -1])
    assert step.cache is None  # the C step never ran


def test_a_hooked_layer_goes_through_the_model():
    """A LoRA adapter kept beside a weight (a forward hook) changes the output: the step must not skip it."""
    from llamalab.model.lora import add_adapter, remove_adapter

    model = tiny_model(4)
    step = native_step(model)
    layer = model.layers[1].feed_forward.w2
    add_adapter(layer, rank=2, alpha=4)
    torch.nn.init.normal_(layer.lora_b, std=1.0)
    assert not supported(model)
    tokens, logits = decode(model, step, PROMPTS, 6)
    assert torch.equal(logits, decode(model, eager_step(model), PROMPTS, 6)[1])
    remove_adapter(layer)
    assert not torch.allclose(decode(model, step, PROMPTS, 6)[1][0], logits[0], atol=1e-3)


def test_models_the_step_does_not_cover():
    assert not supported(tiny_model().to(torch.bfloat16))
    assert not supported(tiny_model().train())
    assert native_step(tiny_model().to(torch.bfloat16)) is None


def test_load_model_decodes_through_the_c_step_with_row_major_weights():
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=80, multiple_of=32, max_seq_len=64)
    loaded = load_model(args, random_init=True, seed=0, device="cpu")
    assert isinstance(loaded.decode_step(), NativeStep)
    assert all(m.weight.is_contiguous() for m in loaded.model.modules() if type(m) is nn.Linear)
    bf16 = load_model(args, random_init=True, seed=0, device="cpu", dtype="bfloat16")
    assert not isinstance(bf16.decode_step(), NativeStep)


def test_huge_pages_back_the_weights_in_place():
    """MADV_COLLAPSE moves a weight's pages, not its values: same tensor, same address, same logits; /proc/self/smaps
    then shows huge pages in the weight's range."""
    torch.manual_seed(0)
    args = ModelArgs(dim=512, n_layers=1, n_heads=8, vocab_size=4096, multiple_of=32, max_seq_len=32)
    model = Transformer(args).eval().requires_grad_(False)  # an 8 MiB embedding/head
    address, before = model.output.weight.data_ptr(), model(torch.tensor([[1, 2, 3]]))
    collapsed = huge_pages(model)
    assert model.output.weight.data_ptr() == address
    assert torch.equal(model(torch.tensor([[1, 2, 3]])), before)
    assert collapsed >= 4 * 2**20  # this Linux (6.1 or later) collapses anonymous memory
    assert huge_bytes_in(address, model.output.weight.nbytes) >= 4 * 2**20


def huge_bytes_in(address: int, size: int) -> int:
    """AnonHugePages of the mappings of /proc/self/smaps overlapping [address, address + size)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start < address + size and address < end
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1]) * 1024
    return total


def test_smollm2_gguf_decodes_the_same_through_the_c_step(smollm2_model):
    """SmolLM2's Q4_1 blocks and Q8_0 tied head, as GGUF stores them: the C step against the model's own layers
    (which dequantize the codes), 32 greedy steps of two prompts."""
    model = smollm2_model
    prompts = [[504, 3458, 282, 4649, 314], [1, 2, 3]]  # "The capital of France is", a short one
    expected, expected_logits = decode(model, eager_step(model), prompts, 32)
    swapped = [m for m in model.modules() if type(m) is BlockLinear]
    try:
        kernel_quantized_linears(model)
        step = native_step(model)
        assert isinstance(step, NativeStep)
        tokens, logits = decode(model, step, prompts, 32)
    finally:
        for module in swapped:  # the session fixture goes back to the plain layers
            module.__class__ = BlockLinear
    assert tokens == expected
    assert (logits - expected_logits).abs().max().item() <= 2e-3  # logits span about ±30
