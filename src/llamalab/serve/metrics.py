"""What the server is doing, in Prometheus' text format (`/metrics`, through `prometheus-client`), and one access-log
line per finished request.

The scheduler thread reports each admitted request, each decode step and each released request; the gauges
(requests running and waiting, KV-cache rows or blocks in use) are read from the scheduler when scraped.
"""
from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ACCESS_LOG = logging.getLogger("llamalab.serve.access")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """Counters, gauges and latency histograms of one scheduler, in a registry of their own."""

    def __init__(self, scheduler):
        self.registry = registry = CollectorRegistry()
        Gauge("llamalab_requests_running", "Requests decoding now", registry=registry).set_function(
            lambda: scheduler.stats()["running"])
        Gauge("llamalab_requests_waiting", "Requests waiting for room in the KV cache", registry=registry
              ).set_function(lambda: scheduler.stats()["waiting"])
        cache = scheduler.engine.cache
        if hasattr(cache, "num_blocks"):  # paged
            Gauge("llamalab_kv_blocks_used", "KV-cache blocks held by requests", registry=registry).set_function(
                lambda: cache.used_blocks)
            Gauge("llamalab_kv_blocks_free", "KV-cache blocks free", registry=registry).set_function(
                lambda: cache.num_blocks - cache.used_blocks)
            Gauge("llamalab_prefix_cache_queried_blocks", "Full prompt blocks looked up in the prefix cache",
                  registry=registry).set_function(lambda: cache.prefix_queries)
            Gauge("llamalab_prefix_cache_hit_blocks", "Prompt blocks found there (hit rate: hit / queried)",
                  registry=registry).set_function(lambda: cache.prefix_hits)
            Gauge("llamalab_prefix_cache_hit_rate", "Share of the queried prompt blocks found in the prefix cache",
                  registry=registry).set_function(lambda: cache.prefix_hit_rate)
        self.prompt_tokens = Counter("llamalab_prompt_tokens", "Prompt tokens prefilled", registry=registry)
        self.generated_tokens = Counter("llamalab_generation_tokens", "Tokens generated (rate() gives tokens/s)",
                                        registry=registry)
        self.preempted = Counter("llamalab_requests_preempted", "Requests preempted (blocks freed, recomputed later)",
                                 registry=registry)
        self.finished = Counter("llamalab_requests_finished", "Requests finished, by reason", ["finish_reason"],
                                registry=registry)
        self.ttft = Histogram("llamalab_time_to_first_token_seconds", "From submission to the first token",
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.itl = Histogram("llamalab_inter_token_latency_seconds", "Between two tokens of a request",
                             buckets=LATENCY_BUCKETS, registry=registry)
        self.e2e = Histogram("llamalab_request_duration_seconds", "From submission to the last token",
                             buckets=LATENCY_BUCKETS, registry=registry)

    def admitted(self, request, resumed: bool = False) -> None:
        """A request was prefilled (or, chunked, began to be); a preempted one coming back has no new prompt."""
        if not resumed:
            self.prompt_tokens.inc(len(request.prompt))

    def stepped(self, requests, now: float | None = None) -> None:
        """These requests each got a token now (from a decode step or their admission)."""
        now = now or time.perf_counter()
        for request in requests:
            if request.first_token_at is None:
                request.first_token_at = now
                self.ttft.observe(now - request.submitted_at)
            else:
                self.itl.observe(now - request.last_token_at)
            request.last_token_at = now
            self.generated_tokens.inc()

    def released(self, request, now: float | None = None) -> None:
        """A request left the engine: count it and write its access-log line."""
        now = now or time.perf_counter()
        reason = request.finish_reason or ("cancelled" if request.cancelled else "error")
        self.finished.labels(reason).inc()
        total = now - request.submitted_at
        self.e2e.observe(total)
        ACCESS_LOG.info("request finish=%s prompt_tokens=%d completion_tokens=%d ttft_s=%.3f duration_s=%.3f",
                        reason, len(request.prompt), request.sampled,
                        (request.first_token_at or now) - request.submitted_at, total)

    def render(self) -> bytes:
        return generate_latest(self.registry)
