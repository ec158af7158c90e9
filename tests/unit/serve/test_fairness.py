"""While clients send the most expensive valid requests, another client is still served promptly.

The ratio of its per-token latency to its idle value is `bench/serve_fairness.py`'s to measure; here only a
generous deadline holds (the suite runs two processes on a shared 2-core machine)."""
import json
import threading
import time

import httpx

PROMPT = "the dog ran far away"


def test_a_client_is_served_while_others_send_the_most_expensive_requests(launch):
    server = launch(slots=4)
    expensive = json.dumps({
        "prompt": [5 + i % 200 for i in range(64)], "max_tokens": 60, "logprobs": 20, "ignore_eos": True,
        "stop": ["x" * 900_000 + str(i) for i in range(4)],  # 3.6 MB of stop strings, under the 4 MB body limit
    }).encode()
    statuses = []

    def hostile():
        r = httpx.post(server.url + "/completions", content=expensive, headers={"content-type": "application/json"},
                       timeout=120)
        statuses.append(r.status_code)

    workers = [threading.Thread(target=hostile) for _ in range(3)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    while httpx.get(server.root + "/health").json()["running"] < 1:  # expensive requests are being decoded (all 3 at
        # once is a race on a fast machine: each finishes in well under a second)
        assert time.monotonic() < deadline and any(w.is_alive() for w in workers), "the hostile requests never ran"
        time.sleep(0.01)
    start = time.monotonic()
    body = {"prompt": PROMPT, "max_tokens": 16, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/completions", json=body, timeout=60) as r:
        chunks = [line for line in r.iter_lines() if line.startswith("data: {")]
    assert json.loads(chunks[-1][6:])["choices"][0]["finish_reason"] == "length"  # all 16 tokens came
    assert time.monotonic() - start < 30  # generous: a quiet machine takes well under 1 s
    for w in workers:
        w.join(timeout=120)
    assert statuses == [200, 200, 200]
