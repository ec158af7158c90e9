"""The compiled decode step: each one compiles on its own."""
import torch
from generate_models import peaked_model

from llamalab.generate.compiled import compile_decode_step


def test_each_compiled_step_has_its_own_recompilation_budget():
    """Dynamo allows 8 compilations per function (with fullgraph, a hard error after): nine steps of nine batch
    sizes in one process must each compile and agree with the model (backend "eager": dynamo's tracing alone)."""
    model = peaked_model(n_layers=1)
    with torch.inference_mode():
        expected = model(torch.ones(1, 1, dtype=torch.long))[:, -1]
        for bsz in range(1, 10):
            model.setup_cache(bsz, 8)
            step = compile_decode_step(model, backend="eager")
            assert torch.allclose(step(torch.ones(bsz, 1, dtype=torch.long), 0), expected.expand(bsz, -1), atol=1e-5)


def captured_graph(model, tokens, start_pos):
    """The FX graph dynamo captures of one decode step, and the step's logits (run by that graph)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    step = compile_decode_step(model, backend=backend)
    return graphs, step(tokens, start_pos)


def test_blocks_are_traced_once_and_every_layer_writes_its_own_cache():
    """Each block is one nested compile region: dynamo traces the first layer and reuses that subgraph for the other
    three (one subgraph, four calls of it), and each call still writes its own layer's KV cache (the cache tensors go
    in as arguments; reached through the module they were all layer 0's — the eager model is the reference)."""
    model = peaked_model(n_layers=4)
    tokens, start = torch.tensor([[5], [9]]), torch.tensor([3, 6])
    with torch.inference_mode():
        model.setup_cache(2, 16)
        model(torch.ones(2, 7, dtype=torch.long), 0)  # a filled prefix
        expected = model(tokens, start, last_only=True)[:, -1]
        expected_cache = [(layer.attention.cache.k.clone(), layer.attention.cache.v.clone()) for layer in model.layers]
        model.setup_cache(2, 16)
        model(torch.ones(2, 7, dtype=torch.long), 0)
        (graph,), logits = captured_graph(model, tokens, start)
    calls = [n for n in graph.graph.nodes if n.target is torch.ops.higher_order.invoke_subgraph]
    assert len(calls) == 4 and len({n.args[0].target for n in calls}) == 1
    torch.testing.assert_close(logits, expected)
    for layer, (k, v) in zip(model.layers, expected_cache):
        torch.testing.assert_close(layer.attention.cache.k, k)
        torch.testing.assert_close(layer.attention.cache.v, v)
