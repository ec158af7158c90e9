"""Decode fast paths give the logits and tokens of the plain model."""
import pytest
import torch
from generate_models import peaked_model

from llamalab.generate.compiled import compile_decode_step
from llamalab.generate.decode import generate
from llamalab.generate.fast import MatVecLinear, column_major_weights, matvec_linears
from llamalab.generate.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)


def test_column_major_weights_keep_values_and_tying():
    model = peaked_model(tie_embeddings=True)
    tokens = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        expected = model(tokens)
    column_major_weights(model)
    wq = model.layers[0].attention.wq.weight
    assert wq.stride() == (1, wq.shape[0])  # column-major: x @ Wᵀ reads a contiguous (in, out) matrix
    assert model.output.weight is model.tok_embeddings.weight
    with torch.no_grad():
        assert torch.allclose(model(tokens), expected, atol=1e-5)


def test_column_major_model_generates_the_same_tokens():
    model = peaked_model()
    prompts = [[1, 2, 3], [1, 9, 8, 7, 6]]
    expected = [c.tokens for c in generate(model, prompts, 10, sampling=GREEDY)]
    column_major_weights(model)
    assert [c.tokens for c in generate(model, prompts, 10, sampling=GREEDY)] == expected


def compiled_matches_eager(device, backend, prompts):
    model = peaked_model().to(device)
    expected = [c.tokens for c in generate(model, prompts, 8, sampling=GREEDY)]
    if device == "cpu":
        matvec_linears(model)
    model.setup_cache(len(prompts), 64)
    step = compile_decode_step(model, backend=backend)
    for _ in range(2):  # the second run replays the compiled step (CUDA graph on GPU)
        assert [c.tokens for c in generate(model, prompts, 8, sampling=GREEDY, step=step)] == expected


def test_decode_step_traces_as_one_static_graph_on_cpu():
    """Dynamo captures the whole step (fullgraph, static shapes) with MatVecLinear's multiply-and-sum;
    the aot_eager backend runs the captured graph without inductor's slow code generation."""
    compiled_matches_eager("cpu", "aot_eager", [[1, 2, 3]])


@pytest.mark.gpu
def test_compiled_decode_step_generates_the_same_tokens_on_gpu():
    compiled_matches_eager("cuda", "inductor", [[1, 2, 3], [1, 9, 8, 7, 6]])


def test_matvec_linears_keep_values_ties_and_state_dict_names():
    model = peaked_model(tie_embeddings=True)
    tokens = torch.randint(0, 97, (1, 6))
    with torch.no_grad():
        expected = model(tokens)
    names = sorted(model.state_dict())
    matvec_linears(column_major_weights(model))
    assert type(model.layers[0].feed_forward.w2) is MatVecLinear and model.output.weight.is_contiguous()
    assert model.output.weight is model.tok_embeddings.weight and sorted(model.state_dict()) == names
    with torch.no_grad():
        assert torch.allclose(model(tokens), expected, atol=1e-5)

