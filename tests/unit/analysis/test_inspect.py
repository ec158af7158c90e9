"""`llamalab inspect`: the numbers checked against the model's own pass and transformers' (SmolLM2), the page's
images present and valid."""
import json
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image

from llamalab.analysis.inspect import inspect_model, record
from llamalab.analysis.inspect_report import write_report
from llamalab.checkpoint import load
from llamalab.checkpoint.hf import hf_config
from llamalab.cli.main import main
from llamalab.config import ModelArgs, RopeScaling
from llamalab.model import Transformer

SCALED_GQA = ModelArgs(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=200, multiple_of=32, max_seq_len=128,
                       rope_theta=500000.0, rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0,
                                                                     high_freq_factor=4.0,
                                                                     original_max_position_embeddings=32))
PROMPT = [1, 17, 42, 99, 3, 150, 7, 64, 12, 5]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Transformer(SCALED_GQA).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embeddings" in name else p.shape[1] ** -0.5)  # O(1) logits: peaked lenses
    return model


def test_checks_against_the_models_own_pass_hold(tiny):
    result = inspect_model(tiny, PROMPT, new_tokens=6)
    checks = result.checks
    assert checks["hooked_logits_max_abs_diff"] == 0
    assert checks["last_lens_vs_output_max_abs_diff"] < 1e-6
    assert checks["attention_times_values_vs_fused_max_rel_diff"] < 1e-5
    assert checks["attention_row_sum_max_abs_diff"] < 1e-5 and checks["attention_above_diagonal_max"] == 0
    assert checks["kv_bytes_vs_estimate_max_abs_diff"] == 0
    for layer in tiny.layers:  # the hooks are gone
        assert not layer._forward_hooks and not layer.attention._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(result.chosen, tiny(torch.tensor([PROMPT]))[0].argmax(-1))


def test_kv_bytes_follow_the_cache_formula(tiny):
    a = SCALED_GQA
    cost = inspect_model(tiny, PROMPT, new_tokens=5).cost
    assert [c["position"] for c in cost] == list(range(len(PROMPT) + 1, len(PROMPT) + 6))
    for c in cost:  # keys and values, every layer, fp32
        assert c["kv_bytes"] == 2 * a.n_layers * a.n_kv_heads * a.head_dim * 4 * c["position"]


def test_rope_matches_transformers_with_llama31_scaling(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(**hf_config(SCALED_GQA)))
    result = inspect_model(tiny, PROMPT, new_tokens=0)
    torch.testing.assert_close(result.rope_frequencies, hf.model.rotary_emb.inv_freq.float(), rtol=1e-6, atol=0)
    assert result.rope_unscaled is not None and result.rope_unscaled[0] == 1.0  # pair 0 turns 1 radian a position
    # q·k after rotation depends on the distance only: rotate both by 37 more positions by hand
    freqs = result.rope_frequencies.double()
    q = k = torch.ones(SCALED_GQA.head_dim, dtype=torch.float64)

    def rotate(x, pos):
        pairs = x.view(-1, 2)
        angle = pos * freqs
        return torch.stack((pairs[:, 0] * angle.cos() - pairs[:, 1] * angle.sin(),
                            pairs[:, 0] * angle.sin() + pairs[:, 1] * angle.cos()), -1).flatten()

    for d in (0, 1, 5, 60):
        assert float(rotate(q, d + 37) @ rotate(k, 37)) == pytest.approx(float(result.rope_dot[d]), abs=1e-4)
        assert float(result.rope_dot[d]) == pytest.approx(2 * float(torch.cos(d * freqs).sum()), abs=1e-4)
    assert result.rope_dot[0] == pytest.approx(SCALED_GQA.head_dim)
    assert result.rope_dot.abs().max() == result.rope_dot[0]


def test_smollm2_attention_and_residuals_equal_transformers(smollm2_hf_dir, hf_smollm2):
    hf_tokenizer, hf = hf_smollm2
    ids = hf_tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    ours = load(smollm2_hf_dir).eval().requires_grad_(False)
    result = inspect_model(ours, ids[0].tolist(), new_tokens=0)
    hf.config._attn_implementation = "eager"  # the one whose attention weights transformers returns
    with torch.no_grad():
        out = hf(ids, output_attentions=True, output_hidden_states=True)
    for layer, (got, expected) in enumerate(zip(result.attention, out.attentions)):
        torch.testing.assert_close(got, expected[0], atol=2e-5, rtol=0, msg=f"layer {layer}")
    _, rec = record(ours, ids)
    for layer in range(ours.args.n_layers - 1):  # transformers' last hidden state is after the final norm
        torch.testing.assert_close(rec.residual[layer], out.hidden_states[layer + 1][0], rtol=1e-4, atol=1e-4)
    final = out.logits[0].softmax(-1)
    torch.testing.assert_close(result.chosen_prob[-1], final.gather(-1, final.argmax(-1, keepdim=True))[:, 0],
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.rope_frequencies, hf.model.rotary_emb.inv_freq.float(), rtol=1e-6, atol=0)
    assert result.checks["attention_times_values_vs_fused_max_rel_diff"] < 1e-4
    assert ours.args.n_kv_heads == 3 and result.attention[0].shape[0] == 9  # GQA: 3 query heads per KV head


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_the_page_shows_every_picture_and_each_is_a_png(tiny, tmp_path):
    result = inspect_model(tiny, PROMPT, new_tokens=4)
    page = write_report(result, tmp_path / "out", label=lambda t: f"t{t}", title="tiny")
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    assert len(parser.sources) == 1 + SCALED_GQA.n_layers + 1 + 1 + 1 + 1  # lens, layers, entropy, rope, acts, cost
    for source in parser.sources:
        path = page.parent / source
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
    assert json.loads((page.parent / "inspection.json").read_text())["tokens"] == PROMPT


def test_cli_inspect_json(tmp_path, capsys):
    argv = ["inspect", "--preset", "debug", "--random-init", "--device", "cpu", "--prompt-ids", "1,2,3,4,5",
            "--out", str(tmp_path / "page"), "--decode-tokens", "3", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == [1, 2, 3, 4, 5] and len(report["cost"]) == 3
    assert (tmp_path / "page" / "index.html").is_file()
    assert report["checks"]["attention_row_sum_max_abs_diff"] < 1e-5


def test_cli_inspect_refuses_a_file_as_out(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    argv = ["inspect", "--preset", "debug", "--random-init", "--prompt-ids", "1,2", "--out", str(tmp_path / "taken"),
            "--decode-tokens", "0"]
    assert main(argv) == 2
    assert "is a file; give --out a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


def test_cli_inspect_refuses_a_prompt_longer_than_the_model(tmp_path, capsys):
    ids = ",".join(["1"] * 129)  # debug: max_seq_len 128
    assert main(["inspect", "--preset", "debug", "--random-init", "--prompt-ids", ids, "--out", str(tmp_path)]) == 2
    assert "128 tokens" in capsys.readouterr().err


def test_outliers_are_the_channels_with_the_largest_activations():
    from llamalab.analysis.inspect import _outliers

    residual = torch.zeros(3, 4, 5)  # (layers, positions, channels)
    residual[1, 2, 3], residual[2, 0, 3], residual[0, 1, 1], residual[2, 3, 0] = -9, 5, 4, 1
    assert _outliers(residual, 3) == [{"layer": 1, "position": 2, "channel": 3, "value": -9.0},
                                      {"layer": 0, "position": 1, "channel": 1, "value": 4.0},
                                      {"layer": 2, "position": 3, "channel": 0, "value": 1.0}]
