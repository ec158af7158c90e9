import pytest
import torch

from llamalab.checkpoint.peft import load_adapters, save_adapters
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError, ConfigError
from llamalab.model import Transformer
from llamalab.model.lora import adapter_state, apply_lora, has_adapter, merge_lora

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=16)
TOKENS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def trained_lora_model(targets=("wq", "wv", "w2"), rank=4, alpha=8.0) -> tuple[Transformer, Transformer]:
    """(base copy, LoRA model after three AdamW steps)."""
    torch.manual_seed(0)
    model = Transformer(ARGS)
    base = Transformer(ARGS)
    base.load_state_dict(model.state_dict())
    apply_lora(model, list(targets), rank, alpha)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model.loss(TOKENS[:, :-1], TOKENS[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return base, model


def test_a_fresh_adapter_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = Transformer(ARGS)
    before = model(TOKENS)
    apply_lora(model, ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"], rank=4, alpha=16)
    torch.testing.assert_close(model(TOKENS), before, rtol=0, atol=0)
    assert sum(has_adapter(m) for m in model.modules()) == 2 * 7 + 1


def test_only_the_adapters_train_and_names_stay_canonical():
    base, model = trained_lora_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.{m}.lora_{ab}" for i in range(2) for m in
                         ("attention.wq", "attention.wv", "feed_forward.w2") for ab in "ab"}
    state = model.state_dict()
    for name, tensor in base.state_dict().items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)  # base weights untouched, same names
    assert all(state[n].abs().sum() > 0 for n in trainable)


def test_merged_weights_compute_what_the_adapters_did():
    _, model = trained_lora_model()
    with torch.no_grad():
        expected = model(TOKENS)
    merged = merge_lora(model.state_dict(), rank=4, alpha=8.0)
    plain = Transformer(ARGS)
    plain.load_state_dict(merged)  # strict: no adapter tensor left
    with torch.no_grad():
        torch.testing.assert_close(plain(TOKENS), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(  # W + alpha/rank * B A, written out for one projection
        merged["layers.1.feed_forward.w2.weight"],
        model.layers[1].feed_forward.w2.weight + 2.0 * model.layers[1].feed_forward.w2.lora_b
        @ model.layers[1].feed_forward.w2.lora_a)


def test_adapters_alone_round_trip(tmp_path):
    base, model = trained_lora_model(targets=("wk", "w1"), rank=2, alpha=4.0)
    save_adapters(model.state_dict(), tmp_path / "adapters", ARGS, ["wk", "w1"], rank=2, alpha=4.0)
    assert {p.name for p in (tmp_path / "adapters").iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}
    load_adapters(base, tmp_path / "adapters")
    with torch.no_grad():
        torch.testing.assert_close(base(TOKENS), model(TOKENS), rtol=0, atol=0)
    assert set(adapter_state(base.state_dict())) == set(adapter_state(model.state_dict()))


def test_wrong_targets_or_adapters_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not understood"):
        apply_lora(Transformer(ARGS), ["attention"], 4, 8)
    with pytest.raises(ConfigError, match="tied"):
        apply_lora(Transformer(ARGS.replace(tie_embeddings=True)), ["output"], 4, 8)
    _, model = trained_lora_model()
    save_adapters(model.state_dict(), tmp_path / "a", ARGS, ["wq", "wv", "w2"], rank=4, alpha=8.0)
    with pytest.raises(CheckpointError, match="shape"):
        load_adapters(Transformer(ARGS.replace(dim=64)), tmp_path / "a")
    with pytest.raises(CheckpointError, match="not a PEFT LoRA adapter folder"):
        load_adapters(Transformer(ARGS), tmp_path)


def test_convert_merges_an_adapter_into_the_weights(tmp_path, capsys):
    from llamalab.checkpoint import convert, load, save
    from llamalab.cli.main import main

    base, model = trained_lora_model(targets=("wq", "wk", "w3"), rank=2, alpha=4.0)
    save(base, tmp_path / "base", format="hf")
    save_adapters(model.state_dict(), tmp_path / "adapter", ARGS, ["wq", "wk", "w3"], rank=2, alpha=4.0)
    assert main(["convert", str(tmp_path / "base"), str(tmp_path / "merged"), "--to", "native",
                 "--lora", str(tmp_path / "adapter")]) == 0
    convert(tmp_path / "base", tmp_path / "merged.gguf", "gguf", lora=tmp_path / "adapter")  # the library call
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "merged")(TOKENS), model(TOKENS), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load(tmp_path / "merged.gguf")(TOKENS), model(TOKENS), rtol=1e-5, atol=1e-5)
    argv = ["convert", str(tmp_path / "base"), str(tmp_path / "x"), "--to", "native", "--lora", str(tmp_path)]
    assert main(argv) == 2
    assert "not a PEFT LoRA adapter folder" in capsys.readouterr().err
