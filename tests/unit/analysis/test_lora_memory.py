"""Training-memory estimates of LoRA, QLoRA and sharded optimizer states against measured peaks and counts."""
import pytest
import torch
from test_memory import BATCH, SEQ_LEN, SMALL, PeakMemory

from llamalab.analysis import count_parameters, training_memory
from llamalab.analysis.memory import lora_parameters
from llamalab.model import Transformer
from llamalab.model.lora import apply_lora
from llamalab.quantize import quantize_model

TARGETS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def lora_model(precision: str, base: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(SMALL["gqa"]).to(torch.float32 if precision == "fp32" else torch.bfloat16)
    if base in ("int8", "int4"):
        quantize_model(model, base, group_size=32, include_output=False)
    apply_lora(model, TARGETS, rank=4, alpha=8.0)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(model.tok_embeddings.weight.dtype)
    return model


def test_adapter_parameters_are_what_the_model_trains():
    model = lora_model("fp32", "fp32")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameters(SMALL["gqa"], 4, TARGETS) == trained


@pytest.mark.parametrize("precision, base", [("fp32", "fp32"), ("bf16", "bf16"), ("bf16", "int8"), ("bf16", "int4")],
                         ids=["lora-fp32", "lora-bf16", "qlora-int8", "qlora-int4"])
def test_lora_training_memory_matches_the_peak_of_a_real_step(precision, base):
    model = lora_model(precision, base)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3, foreach=False)
    batch = torch.randint(0, SMALL["gqa"].vocab_size, (BATCH, SEQ_LEN))

    def step():
        model.loss(batch, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step()  # creates the gradients and AdamW's moments
    state = [*model.parameters(), *model.buffers(), *(p.grad for p in trained),
             *(v for s in optimizer.state.values() for v in s.values() if v.dim() > 0)]
    with PeakMemory(state) as memory:
        step()
    estimate = training_memory(SMALL["gqa"], BATCH, SEQ_LEN, precision, lora_rank=4, lora_targets=TARGETS, base=base)
    assert estimate.total == pytest.approx(memory.peak, rel=0.10)


def test_zero_stages_shard_optimizer_states_then_gradients_then_weights():
    args, dp = SMALL["gqa"], 4
    n = count_parameters(args).total
    stage = {z: training_memory(args, BATCH, SEQ_LEN, "mixed", dp=dp, zero=z) for z in (1, 2, 3)}
    assert (stage[1].optimizer, stage[1].master_weights) == (round(8 * n / dp), round(4 * n / dp))  # AdamW m, v
    assert (stage[1].gradients, stage[1].weights) == (2 * n, 2 * n)
    assert (stage[2].gradients, stage[2].weights) == (round(2 * n / dp), 2 * n)
    assert (stage[3].gradients, stage[3].weights) == (round(2 * n / dp), round(2 * n / dp))
