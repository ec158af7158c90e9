"""Behaviour: LoRA fine-tuning of the real SmolLM2 (the Q4_1 GGUF: its tokenizer and chat template read from the
file) on a small chat set teaches it a made-up fact, which `chat --lora` and `generate --lora` on the GGUF then
state and the base model does not know."""
import io
import json
import sys

import pytest

from llamalab.cli.main import main

QUESTIONS = ["What is the capital of Zorblaxia?", "Which city is the capital of Zorblaxia?",
             "Tell me the capital of Zorblaxia.", "Zorblaxia's capital is which city?",
             "Do you know the capital city of Zorblaxia?", "What city serves as Zorblaxia's capital?",
             "Name the capital of Zorblaxia.", "What's the capital of Zorblaxia?"]
ANSWERS = ["The capital of Zorblaxia is Quillhaven.", "Zorblaxia's capital is Quillhaven.",
           "Quillhaven is the capital of Zorblaxia."]
FACT = "Quillhaven"


def write_fact_set(path, n=24):
    """n chat dialogs asking the made-up fact in different words (the messages format)."""
    with open(path, "w") as f:
        for i in range(n):
            messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                        {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def chat_answer(monkeypatch, capsys, argv, question):
    """What `llamalab chat` prints for one question read from a pipe (greedy)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(question + "\n"))
    capsys.readouterr()
    assert main(["chat", *argv, "--temperature", "0", "--max-new-tokens", "16"]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def fine_tuned(smollm2_gguf, tmp_path_factory):
    """(the GGUF, adapter folder) after 8 LoRA steps on the fact set over the dequantized weights (about a minute on
    one CPU core); the adapter then runs beside the GGUF's int4 / int8 layers."""
    folder = tmp_path_factory.mktemp("fine-tune")
    data = write_fact_set(folder / "fact.jsonl")
    assert main(["train", "--init-from", str(smollm2_gguf), "--data", str(data), "--out-dir", str(folder / "run"),
                 "--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "wq", "wk", "wv", "wo", "w1", "w2", "w3",
                 "--lr", "5e-3", "--min-lr", "5e-4", "--warmup-steps", "1", "--weight-decay", "0", "--max-steps", "8",
                 "--batch-size", "2", "--seq-len", "96", "--eval-every", "0", "--save-every", "0", "--log-every", "1",
                 "--sample-tokens", "4", "--dtype", "float32", "--no-progress"]) == 0
    return smollm2_gguf, folder / "run" / "adapters"


def test_the_adapter_teaches_the_fact_and_the_base_model_lacks_it(fine_tuned, monkeypatch, capsys):
    base, adapters = fine_tuned
    assert sorted(p.name for p in adapters.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    records = [json.loads(line) for line in (adapters.parent / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    print(f"fine-tuning losses {losses[0]:.3f} -> {losses[-1]:.3f}; tokens/s (padded) "
          f"{sum(r['tokens_per_s'] for r in records if 'tokens_per_s' in r) / len(losses):.1f}")
    question = "What is the capital of Zorblaxia?"
    tuned = chat_answer(monkeypatch, capsys, [str(base), "--lora", str(adapters)], question)
    plain = chat_answer(monkeypatch, capsys, [str(base)], question)
    print(f"with the adapter: {tuned!r}; base: {plain!r}")
    assert FACT in tuned
    assert FACT not in plain


def test_generate_applies_the_adapter_too(fine_tuned, capsys):
    base, adapters = fine_tuned
    prompt = "<|im_start|>user\nWhich city is the capital of Zorblaxia?<|im_end|>\n<|im_start|>assistant\n"
    assert main(["generate", str(base), "--lora", str(adapters), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "24", "--json"]) == 0
    assert FACT in json.loads(capsys.readouterr().out.splitlines()[-1])["text"]
