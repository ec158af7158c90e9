"""`llamalab eval` on the real SmolLM2 equals transformers' sliding-window perplexity on the same text."""
import json
import math

import pytest
import torch

from llamalab.checkpoint import load
from llamalab.cli.main import main
from llamalab.tokenizer import load_tokenizer
from llamalab.train.evaluate import perplexity, read_eval_text

CONTEXT, STRIDE = 96, 40  # windows overlap by 56 tokens; the last one is shorter
TEXT = """The Transformer replaced recurrence with attention: every token looks at every earlier token at once.
LLaMA keeps that idea and changes the details. RMSNorm normalises before each sub-layer, rotary position
embeddings (RoPE) rotate queries and keys by an angle proportional to their position, and the feed-forward
layer is a SwiGLU: w2(silu(w1 x) * w3 x). Grouped-query attention lets 9 query heads share 3 key/value heads.

def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

Perplexity is exp(mean negative log-likelihood). A model that spreads its bets evenly over 49,152 tokens has a
perplexity of 49,152; a good one, on ordinary English, lands between 5 and 30. Café, naïve, Zürich and 東京 cost
more bytes than tokens suggest, which is why bits per byte compares tokenizers fairly: 3.14159 × 2 = 6.28318.
"""


def hf_sliding_nats(model, ids: torch.Tensor, context: int, stride: int) -> tuple[float, int]:
    """Summed nats and scored tokens of transformers' strided perplexity recipe (labels -100 over the context part).

    transformers' loss is the mean over each window's scored tokens, so the sum is loss × scored, window by window."""
    nats, scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        inputs = ids[None, begin:end]
        labels = inputs.clone()
        labels[:, : -(end - prev_end)] = -100  # tokens an earlier window scored are context only
        n = int((labels[:, 1:] != -100).sum())  # the model shifts the labels by one
        with torch.no_grad():
            nats += model(inputs, labels=labels).loss.item() * n
        scored += n
        prev_end = end
        if end == len(ids):
            break
    return nats, scored


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(hf_smollm2):
    """transformers' token ids of TEXT and its (summed nats, scored tokens) under the same windows."""
    tokenizer, model = hf_smollm2
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[0]
    return ids, *hf_sliding_nats(model, ids, CONTEXT, STRIDE)


def test_perplexity_equals_transformers_on_smollm2(smollm2_hf_dir, text_file, reference):
    hf_ids, hf_nats, hf_scored = reference
    assert len(hf_ids) > 2 * CONTEXT  # several windows, the last one shorter
    text = read_eval_text(text_file, load_tokenizer(smollm2_hf_dir))
    assert text.ids.tolist() == hf_ids.tolist()
    assert text.n_bytes == len(TEXT.encode("utf-8"))
    model = load(smollm2_hf_dir).eval()
    result = perplexity(model, text.ids, CONTEXT, STRIDE, text.n_bytes, batch_size=2)
    assert result.tokens == hf_scored == len(hf_ids) - 1  # every token but the first, once
    assert result.nats_per_token == pytest.approx(hf_nats / hf_scored, rel=1e-3)
    assert result.perplexity == pytest.approx(math.exp(hf_nats / hf_scored), rel=1e-3)
    assert result.bits_per_byte == pytest.approx(hf_nats / math.log(2) / len(TEXT.encode("utf-8")), rel=1e-3)


def test_cli_eval_json_reports_transformers_numbers(smollm2_hf_dir, text_file, reference, capsys):
    _, hf_nats, hf_scored = reference
    argv = ["eval", str(smollm2_hf_dir), "--data", str(text_file), "--context", str(CONTEXT),
            "--stride", str(STRIDE), "--no-progress", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == hf_scored
    assert report["nats_per_token"] == pytest.approx(hf_nats / hf_scored, rel=1e-3)
    assert report["perplexity"] == pytest.approx(math.exp(hf_nats / hf_scored), rel=1e-3)
    assert report["bits_per_byte"] == pytest.approx(hf_nats / math.log(2) / len(TEXT.encode("utf-8")), rel=1e-3)
    assert report["tokens_per_s"] > 0 and report["context"] == CONTEXT and report["stride"] == STRIDE
