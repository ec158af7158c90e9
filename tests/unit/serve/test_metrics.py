"""/metrics in Prometheus' text format, read back with prometheus-client's own parser, and the access log."""
import logging

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families


def scrape(server) -> dict:
    """{sample name (with labels): value} of the server's /metrics."""
    response = httpx.get(server.root + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            samples[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return samples


def test_metrics_count_the_requests_tokens_and_latencies(launch, caplog):
    server = launch(slots=4)
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
    before = scrape(server)
    assert before["llamalab_requests_running"] == 0 and before["llamalab_generation_tokens_total"] == 0
    with caplog.at_level(logging.INFO, logger="llamalab.serve.access"):
        answers = [client.completions.create(model="tiny", prompt="once upon a time", max_tokens=5,
                                             temperature=0, extra_body={"ignore_eos": True}) for _ in range(3)]
    after = scrape(server)
    prompt = answers[0].usage.prompt_tokens
    assert after["llamalab_generation_tokens_total"] == 15 and after["llamalab_prompt_tokens_total"] == 3 * prompt
    assert after["llamalab_requests_finished_total{finish_reason=length}"] == 3
    assert after["llamalab_time_to_first_token_seconds_count"] == 3
    assert after["llamalab_inter_token_latency_seconds_count"] == 3 * 4  # 5 tokens: 4 gaps each
    assert after["llamalab_request_duration_seconds_count"] == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "llamalab.serve.access"]
    assert len(lines) == 3 and all("finish=length" in line and "completion_tokens=5" in line for line in lines)


def test_a_paged_server_reports_its_blocks(launch):
    server = launch(slots=4, kv_cache_bytes=8 * 16 * 2 * 2 * 2 * 16 * 4)  # 8 blocks of 16 positions
    samples = scrape(server)
    assert (samples["llamalab_kv_blocks_used"], samples["llamalab_kv_blocks_free"]) == (0, 8)


def test_the_prefix_cache_hit_rate_is_reported_in_metrics_and_health(launch, tokenizer):
    server = launch(slots=4, kv_cache_bytes=16 * 16 * 2 * 2 * 2 * 16 * 4, prefix_caching=True)  # 16 blocks of 16
    prompt = "once upon a time there was a little girl named lily who loved to play in the park with her dog max"
    blocks = (len(tokenizer.encode(prompt, bos=True)) - 1) // 16  # full blocks before the prompt's last token
    assert blocks >= 1
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
    answers = [client.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0).choices[0].text
               for _ in range(2)]
    assert answers[0] == answers[1]  # the second one read the first one's blocks
    samples = scrape(server)
    assert samples["llamalab_prefix_cache_queried_blocks"] == 2 * blocks
    assert samples["llamalab_prefix_cache_hit_blocks"] == blocks
    assert samples["llamalab_prefix_cache_hit_rate"] == 0.5
    assert httpx.get(server.root + "/health").json()["prefix_cache_hit_rate"] == 0.5
