"""LoRA adapters in PEFT's format both ways, with `peft` on the transformers model of the same weights as the oracle."""
import json

import peft  # noqa: E402  (test dependencies: failing to import them must fail the run, not skip)
import pytest
import torch
import transformers  # noqa: E402

from llamalab.checkpoint import load, save  # noqa: E402
from llamalab.checkpoint.peft import load_adapters, save_adapters  # noqa: E402
from llamalab.config import ModelArgs  # noqa: E402
from llamalab.model import Transformer  # noqa: E402
from llamalab.model.lora import apply_lora, has_adapter  # noqa: E402

GQA = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=64)
ALL = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]
TOKENS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))


def trained_looking_adapters(model, targets, rank=4, alpha=8.0):
    """LoRA on `targets` with random (nonzero) A and B, as if trained: the row order of B matters."""
    apply_lora(model, targets, rank, alpha)
    torch.manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if has_adapter(module):
                module.lora_b.normal_(0, 0.05)
    return model.eval()


def tiny_pair(tmp_path):
    """(our model, transformers' model) of the same random GQA weights."""
    torch.manual_seed(2)
    ours = Transformer(GQA).eval()
    save(ours, tmp_path / "base", format="hf")
    return ours, transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()


def test_peft_applies_our_adapters_as_we_do(tmp_path):
    ours, hf = tiny_pair(tmp_path)
    trained_looking_adapters(ours, ALL)
    save_adapters(ours.state_dict(), tmp_path / "ours", GQA, ALL, rank=4, alpha=8.0)
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    with_adapter = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(TOKENS).logits, ours(TOKENS), rtol=0, atol=1e-5)
        with with_adapter.disable_adapter():  # the adapter does change the logits
            assert not torch.allclose(with_adapter(TOKENS).logits, ours(TOKENS), atol=1e-3)


def test_we_apply_peft_made_adapters_as_peft_does(tmp_path):
    ours, hf = tiny_pair(tmp_path)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                  "up_proj", "down_proj"], init_lora_weights=False)
    torch.manual_seed(4)
    with_adapter = peft.get_peft_model(hf, config).eval()
    with_adapter.save_pretrained(tmp_path / "peft")
    load_adapters(ours, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(ours(TOKENS), with_adapter(TOKENS).logits, rtol=0, atol=1e-5)


def test_rslora_scale_is_alpha_over_root_rank(tmp_path):
    ours, hf = tiny_pair(tmp_path)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                             use_rslora=True)
    with_adapter = peft.get_peft_model(hf, config).eval()
    with_adapter.save_pretrained(tmp_path / "peft")
    load_adapters(ours, tmp_path / "peft")
    assert ours.layers[0].attention.wq.lora_scale == pytest.approx(8 / 2)
    with torch.no_grad():
        torch.testing.assert_close(ours(TOKENS), with_adapter(TOKENS).logits, rtol=0, atol=1e-5)


def test_real_model_adapters_match_peft_both_ways(smollm2_hf_dir, tmp_path):
    """SmolLM2 (9 query heads, 3 key-value heads): our adapter under PEFT, and PEFT's under ours."""
    tokens = torch.tensor([[1, 4093, 198, 19556, 17, 2683, 359, 253, 5356, 5646, 11173, 2]])
    ours = trained_looking_adapters(load(smollm2_hf_dir), ["wq", "wk", "wv", "w2"])
    save_adapters(ours.state_dict(), tmp_path / "ours", ours.args, ["wq", "wk", "wv", "w2"], 4, 8.0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    with_adapter = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    with torch.no_grad():
        expected, got = with_adapter(tokens).logits, ours(tokens)
    relative = ((expected - got).abs().max() / expected.abs().max()).item()
    diff = (expected - got).abs().max()
    print(f"SmolLM2 ours->PEFT max |logit diff| {diff:.2e}, {relative:.1e} of the largest logit")
    assert relative < 1e-5  # 30 float32 layers: the sums' order differs from transformers'; the tiny model holds 1e-5

    with_adapter.save_pretrained(tmp_path / "again")  # PEFT's own writing of the same adapter
    back = load_adapters(load(smollm2_hf_dir).eval(), tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), got, rtol=0, atol=1e-6)


def test_adapter_files_are_peft_names(tmp_path):
    from safetensors.torch import load_file

    ours = trained_looking_adapters(Transformer(GQA), ["wq", "w2"])
    save_adapters(ours.state_dict(), tmp_path / "a", GQA, ["wq", "w2"], 4, 8.0)
    names = set(load_file(tmp_path / "a" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in names
    assert "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" in names
    assert len(names) == 2 * 2 * 2
