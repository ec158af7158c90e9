"""SmolLM2 served with the server's defaults (paged KV cache sized from memory, prefix caching, the C decode step over
the GGUF's int4 / Q8_0 codes as `llamalab serve` loads them; prefill chunks made small here so the prompts take
several): each chat answer is transformers' greedy answer, and the requests after the first read the shared system
prompt from the prefix cache."""
import copy
import time

import pytest
import torch
from fastapi.testclient import TestClient

from llamalab.inference import LoadedModel
from llamalab.quantize.native import kernel_quantized_linears, kernels
from llamalab.quantize.native_decode import NativeStep
from llamalab.serve import create_server
from llamalab.tokenizer import load_tokenizer

SYSTEM = {"role": "system", "content": "You are a concise geography assistant. Answer every question with one short "
                                       "sentence that names the place asked about, and nothing else."}
QUESTIONS = ["What is the capital of France?", "What is the capital of Italy?", "Which ocean lies west of Portugal?"]


@pytest.fixture(scope="module")
def expected(hf_smollm2):
    """transformers' greedy answers (24 tokens at most, cut at <|im_end|>)."""
    hf_tokenizer, hf_model = hf_smollm2
    answers = []
    for question in QUESTIONS:
        messages = [SYSTEM, {"role": "user", "content": question}]
        prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)["input_ids"]
        with torch.no_grad():
            out = hf_model.generate(prompt, max_new_tokens=24, do_sample=False)
        answers.append(hf_tokenizer.decode(out[0, prompt.shape[1]:]).split("<|im_end|>")[0])
    return answers


def test_smollm2_served_by_default_answers_as_transformers(smollm2_model, smollm2_gguf, expected):
    tokenizer = load_tokenizer(smollm2_gguf)
    model = copy.deepcopy(smollm2_model)  # the server sets up its own cache on the model it owns
    kernel_quantized_linears(model)  # as load_model prepares a GGUF for CPU: the C step reads its codes
    server = create_server(LoadedModel(model, tokenizer, seed=None), "smollm2", slots=4, max_seq_len=256,
                           prefill_chunk=16)
    assert server.plan is not None and server.scheduler.engine.cache.prefix_caching  # the defaults: paged, shared
    with TestClient(server.app) as client:
        answers = []
        for question in QUESTIONS:
            r = client.post("/v1/chat/completions", json={
                "model": "smollm2", "messages": [SYSTEM, {"role": "user", "content": question}],
                "temperature": 0, "max_tokens": 24})
            assert r.status_code == 200, r.text
            answers.append(r.json()["choices"][0]["message"]["content"])
        deadline = time.monotonic() + 10  # the scheduler frees a finished request's blocks just after its answer
        while (health := client.get("/health").json())["kv_blocks_used"] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert answers == expected and all(answer.strip() for answer in answers)
    step = server.scheduler.engine.calls.step
    assert kernels() is None or (isinstance(step, NativeStep) and step.cache is server.scheduler.engine.cache)
    assert health["prefix_cache_hit_rate"] > 0.5 and health["kv_blocks_used"] == 0
