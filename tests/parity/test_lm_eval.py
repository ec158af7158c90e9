"""lm-evaluation-harness as the client: a multiple-choice task scored through `llamalab serve` (local-completions:
echo + prompt logprobs, token-id prompt lists, /tokenize) equals the same task scored by lm-eval's own transformers
backend on the same weights; a generation task runs through local-chat-completions."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

QUESTIONS = [
    ("What color is the sky on a clear day?", ["blue", "green", "red", "black"], 0),
    ("How many legs does a dog have?", ["two", "four", "six", "eight"], 1),
    ("What is the capital of France?", ["Berlin", "Madrid", "Paris", "Rome"], 2),
    ("Which animal says moo?", ["cat", "cow", "duck", "lion"], 1),
    ("What is 2 plus 2?", ["three", "five", "four", "six"], 2),
    ("Which season is the coldest?", ["summer", "spring", "autumn", "winter"], 3),
    ("What do bees make?", ["honey", "milk", "silk", "wool"], 0),
    ("Which planet do we live on?", ["Mars", "Venus", "Earth", "Jupiter"], 2),
    ("What is frozen water called?", ["steam", "ice", "sand", "glass"], 1),
    ("How many days are in a week?", ["five", "six", "seven", "eight"], 2),
    ("Which fruit is yellow and long?", ["banana", "apple", "grape", "cherry"], 0),
    ("What do you use to write on paper?", ["spoon", "pencil", "fork", "plate"], 1),
    ("Which is the largest ocean?", ["Atlantic", "Indian", "Arctic", "Pacific"], 3),
    ("What gas do plants take in?", ["oxygen", "carbon dioxide", "helium", "neon"], 1),
    ("What is the opposite of hot?", ["warm", "cold", "wet", "loud"], 1),
    ("Which bird is a symbol of peace?", ["crow", "eagle", "dove", "owl"], 2),
    ("How many hours are in a day?", ["twelve", "twenty-four", "thirty", "sixty"], 1),
    ("What do cows drink?", ["water", "oil", "juice", "coffee"], 0),
    ("Which shape has three sides?", ["square", "circle", "triangle", "hexagon"], 2),
    ("What is the color of grass?", ["purple", "green", "white", "orange"], 1),
    ("Where do fish live?", ["in trees", "in water", "in the sky", "in sand"], 1),
    ("What does a thermometer measure?", ["weight", "time", "temperature", "length"], 2),
    ("Which month comes after January?", ["March", "February", "December", "June"], 1),
    ("What is the sun?", ["a planet", "a moon", "a star", "a comet"], 2),
]
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Spain", "Madrid")]

MC_TASK = """task: llamalab_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GEN_TASK = """task: llamalab_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "What is the capital of {{{{country}}}}? Answer with one word."
doc_to_target: "{{{{capital}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A folder for --include_path: the two task YAMLs and the JSONL files they read."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "capitals.jsonl").write_text("".join(json.dumps({"country": c, "capital": k}) + "\n"
                                                   for c, k in CAPITALS))
    (folder / "mc.yaml").write_text(MC_TASK.format(data=folder / "mc.jsonl"))
    (folder / "capitals.yaml").write_text(GEN_TASK.format(data=folder / "capitals.jsonl"))
    return folder


@pytest.fixture(scope="module")
def served(smollm2_hf_dir):
    """`llamalab serve` on the SmolLM2 HF folder, as a user starts it; yields its root URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "llamalab", "serve", str(smollm2_hf_dir), "--port", str(port), "--slots", "8",
         "--max-seq-len", "512", "--served-model-name", "smollm2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, process.stderr.read()
        try:
            if httpx.get(root + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.5)
    yield root
    process.terminate()
    process.wait(timeout=30)


def evaluate(tasks, task: str, model: str, model_args: dict, **options) -> dict:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=model, model_args=model_args, tasks=[task], task_manager=TaskManager(
        include_path=str(tasks)), log_samples=True, **options)


def per_item(result: dict, task: str) -> dict[int, list[float]]:
    return {s["doc_id"]: [float(ll) for ll, _ in s["filtered_resps"]] for s in result["samples"][task]}


@pytest.mark.slow
def test_multiple_choice_through_the_server_equals_transformers(tasks, served, smollm2_hf_dir):
    api = evaluate(tasks, "llamalab_mc", "local-completions", {
        "model": "smollm2", "base_url": served + "/v1/completions", "num_concurrent": 2, "max_retries": 1,
        "tokenizer_backend": "remote"}, batch_size=8)
    hf = evaluate(tasks, "llamalab_mc", "hf", {"pretrained": str(smollm2_hf_dir), "dtype": "float32"},
                  batch_size=8, device="cpu")
    ours, theirs = per_item(api, "llamalab_mc"), per_item(hf, "llamalab_mc")
    assert sorted(ours) == sorted(theirs) == list(range(len(QUESTIONS)))
    for doc in ours:
        assert ours[doc] == pytest.approx(theirs[doc], abs=1e-3), doc
    accuracy = api["results"]["llamalab_mc"]["acc,none"]
    assert accuracy == hf["results"]["llamalab_mc"]["acc,none"]
    assert accuracy > 0.5  # the instruct model knows most of these (chance is 0.25)


@pytest.mark.slow
def test_generation_through_chat_completions(tasks, served):
    import openai

    result = evaluate(tasks, "llamalab_capitals", "local-chat-completions", {
        "model": "smollm2", "base_url": served + "/v1/chat/completions", "num_concurrent": 2, "max_retries": 1},
        apply_chat_template=True)
    samples = sorted(result["samples"]["llamalab_capitals"], key=lambda s: s["doc_id"])
    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    for sample, (country, _) in zip(samples, CAPITALS):
        question = f"What is the capital of {country}? Answer with one word."
        direct = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": question}],
                                                max_tokens=12, temperature=0, stop=["\n"])
        assert sample["resps"][0][0] == direct.choices[0].message.content  # the harness got the server's answer
        assert sample["resps"][0][0]
    answers = [s["resps"][0][0].lower() for s in samples]
    assert sum(capital.lower() in a for a, (_, capital) in zip(answers, CAPITALS)) >= 3  # "The capital ... is Paris."
    assert 0 <= result["results"]["llamalab_capitals"]["exact_match,none"] <= 1
