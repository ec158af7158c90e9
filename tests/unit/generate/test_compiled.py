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
