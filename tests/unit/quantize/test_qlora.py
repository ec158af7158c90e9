"""QLoRA: LoRA over frozen int8 / int4 weights trains exactly as LoRA over float weights holding the same values."""
import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.model import Transformer
from llamalab.model.lora import apply_lora, has_adapter
from llamalab.quantize import quantize_model
from llamalab.quantize.int4 import Int4Linear
from llamalab.quantize.int8 import Int8Linear

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=64)
TOKENS = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(0))
TARGETS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def dequantized_copy(quantized: Transformer) -> Transformer:
    """A float model whose linear weights are the quantized model's dequantized values."""
    plain = Transformer(ARGS)
    state = {k: v for k, v in quantized.state_dict().items() if k in plain.state_dict()}
    for name, module in quantized.named_modules():
        if isinstance(module, (Int4Linear, Int8Linear)):
            state[f"{name}.weight"] = module.dequantize()
    plain.load_state_dict(state)
    return plain


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_lora_over_a_quantized_base_has_the_float_gradients(scheme):
    torch.manual_seed(0)
    quantized = quantize_model(Transformer(ARGS), scheme, group_size=32, include_output=False)
    plain = dequantized_copy(quantized)
    results = []
    for model in (quantized, plain):
        torch.manual_seed(1)
        apply_lora(model, TARGETS, rank=4, alpha=8.0)
        for module in model.modules():
            if has_adapter(module):
                torch.nn.init.normal_(module.lora_b, std=0.1)  # as after some training: every path carries gradient
        loss = model(TOKENS[:, :-1], targets=TOKENS[:, 1:])
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (q_loss, q_grads), (f_loss, f_grads) = results
    torch.testing.assert_close(q_loss, f_loss, rtol=1e-6, atol=1e-6)
    assert q_grads.keys() == f_grads.keys() and len(q_grads) == 2 * 7 * 2
    for name in f_grads:
        torch.testing.assert_close(q_grads[name], f_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(b.dtype in (torch.int8, torch.uint8) for n, b in quantized.named_buffers() if n.endswith("wq.weight"))
