"""The chat answer of SmolLM2 through the file's own tokenizer and chat template: transformers' greedy answer to
"What is the capital of France?" is `The capital of France is Paris.<|im_end|>`; ours must be it and stop there."""
import json

import pytest

from llamalab.cli.main import main
from llamalab.generate.decode import Generation
from llamalab.generate.sampling import SamplingParams
from llamalab.tokenizer import encode_dialog, load_tokenizer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


def test_transformers_answers_paris_and_ends_the_turn(hf_smollm2):
    """The oracle itself: greedy on transformers' model of the same file."""
    import torch

    hf_tokenizer, hf_model = hf_smollm2
    prompt = hf_tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)["input_ids"]
    with torch.no_grad():
        out = hf_model.generate(prompt, max_new_tokens=16, do_sample=False)
    assert hf_tokenizer.decode(out[0, prompt.shape[1]:]) == ANSWER + "<|im_end|>"


def test_our_model_answers_paris_and_stops_at_im_end(smollm2_model, tokenizer):
    prompt = encode_dialog(tokenizer, QUESTION)
    generation = Generation(smollm2_model, [prompt], 32, SamplingParams(temperature=0), stop_ids=tokenizer.stop_ids)
    for _ in generation:
        pass
    (completion,) = generation.completions
    im_end = tokenizer.special_tokens["<|im_end|>"]
    assert tokenizer.decode(completion.tokens) == ANSWER
    assert completion.finish_reason == "stop" and len(completion.tokens) < 32
    assert im_end in tokenizer.stop_ids


def test_cli_chat_and_generate_answer_paris_from_the_lone_gguf(smollm2_gguf, tokenizer, capsys, monkeypatch):
    import io

    greedy = ["--temperature", "0", "--max-new-tokens", "32"]
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\n"))
    assert main(["chat", str(smollm2_gguf), *greedy]) == 0
    assert capsys.readouterr().out.strip() == ANSWER
    prompt = ",".join(map(str, encode_dialog(tokenizer, QUESTION)))
    assert main(["generate", str(smollm2_gguf), "--prompt-ids", prompt, "--json", *greedy]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["text"], out["finish_reason"]) == (ANSWER, "stop")


def test_cli_prompts_get_no_bos_as_add_bos_token_says(smollm2_gguf, tokenizer, hf_smollm2, capsys):
    from llamalab.cli.generate import prompt_ids

    text = "The capital of France is"
    expected = hf_smollm2[0].encode(text)
    assert expected[0] != tokenizer.bos_id
    assert prompt_ids(text, None, tokenizer, 49152) == expected
    assert main(["tokenizer", "encode", str(smollm2_gguf), text, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == expected


def test_served_chat_answers_paris_and_stops_at_im_end(smollm2_model, tokenizer):
    from fastapi.testclient import TestClient

    from llamalab.serve import Scheduler, create_app

    app = create_app(Scheduler(smollm2_model, slots=1, max_seq_len=256), tokenizer, "smollm2")
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json={"model": "smollm2", "messages": QUESTION,
                                                              "temperature": 0, "max_tokens": 32})
    choice = response.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (ANSWER, "stop")
