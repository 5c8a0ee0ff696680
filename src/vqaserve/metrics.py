"""Prometheus metrics, one `Metrics` object (with its own CollectorRegistry) per app.

Several apps in one process (tests) must not clash, so nothing is registered globally. The app
creates one `Metrics`, exposes it as `app.state.metrics` and passes it to `wiring.build_pipeline`,
which puts it in `Components.extra["metrics"]` and wires `Components.observe` to `observe_stage`.

Helpers other modules call (all cheap, thread-safe):
    metrics.observe_stage(stage, seconds)   latency of a pipeline stage: decode, safety, cache,
                                            queue, generate, safety_out (Components.observe)
    metrics.batch_size.observe(n)           size of each batch handed to the engine (batcher)
    metrics.queue_depth.set(n)              requests waiting in the batcher queue (batcher)
    metrics.observe_batch(metric, value)    the batcher's observer callback, one entry point for
                                            queue_depth, batch_size, batch_visual_tokens,
                                            batch_seconds, rejected, queue_seconds (-> the
                                            "queue" stage) (create_app wires it in)
    metrics.count_cache(status)             "hit" | "miss" | "bypass" per answer
    metrics.count_tokens(prompt, completion)
    metrics.safety_blocks.labels(stage="input"|"output").inc()
    metrics.engine_errors.labels(code="engine_failure"|...).inc()
    vqa_vision_tower_images_total{result="hit"|"miss"}  pictures whose vision-tower output was reused
                                            or computed (read from engines.vision_memo at scrape time)
Request counts and latencies per route are recorded by the app's access middleware.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

# Stage latencies span ~0.1 ms (L1 cache) to minutes (CPU generation).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, namespace: str = "vqa") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.requests = Counter("requests", "HTTP requests by route and status",
                                ["route", "method", "status"], namespace=ns, registry=r)
        self.request_latency = Histogram("request_seconds", "HTTP request latency by route",
                                         ["route"], namespace=ns, registry=r, buckets=STAGE_BUCKETS)
        self.stage_latency = Histogram("stage_seconds", "Latency of each pipeline stage",
                                       ["stage"], namespace=ns, registry=r, buckets=STAGE_BUCKETS)
        self.tokens = Counter("tokens", "Tokens processed", ["direction"], namespace=ns, registry=r)
        self.batch_size = Histogram("batch_size", "Requests per engine batch", namespace=ns,
                                    registry=r, buckets=BATCH_BUCKETS)
        self.batch_visual_tokens = Histogram("batch_visual_tokens", "Visual tokens per engine batch",
                                             namespace=ns, registry=r,
                                             buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768))
        self.batch_seconds = Histogram("batch_seconds", "Engine time per batch", namespace=ns,
                                       registry=r, buckets=STAGE_BUCKETS)
        self.queue_rejections = Counter("queue_rejections", "Requests refused because the queue was full",
                                        namespace=ns, registry=r)
        self.queue_depth = Gauge("queue_depth", "Requests waiting for the engine", namespace=ns,
                                 registry=r)
        self.cache = Counter("cache_lookups", "Answer cache results", ["result"], namespace=ns,
                             registry=r)
        self.safety_blocks = Counter("safety_blocks", "Requests or answers blocked by safety checks",
                                     ["stage"], namespace=ns, registry=r)
        self.engine_errors = Counter("engine_errors", "Engine failures by error code", ["code"],
                                     namespace=ns, registry=r)
        self.in_flight = Gauge("requests_in_flight", "HTTP requests being handled", namespace=ns,
                               registry=r)
        r.register(_VisionTowerCollector(ns))

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage=stage).observe(seconds)

    def observe_batch(self, metric: str, value: float) -> None:
        """The batcher's observer: (metric name, value). Unknown names are ignored, never raised."""
        if metric == "queue_depth":
            self.queue_depth.set(value)
        elif metric == "batch_size":
            self.batch_size.observe(value)
        elif metric == "batch_visual_tokens":
            self.batch_visual_tokens.observe(value)
        elif metric == "batch_seconds":
            self.batch_seconds.observe(value)
        elif metric == "rejected":
            self.queue_rejections.inc(value)
        elif metric in ("queue_seconds", "queue"):  # time a request waited before its batch ran
            self.observe_stage("queue", value)

    def count_cache(self, status: str) -> None:
        self.cache.labels(result=status).inc()

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.tokens.labels(direction="in").inc(prompt)
        self.tokens.labels(direction="out").inc(completion)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.request_latency.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _VisionTowerCollector:
    """The in-process engine's vision memo (engines/vision_memo.py): pictures reused vs computed."""

    def __init__(self, namespace: str) -> None:
        self.name = f"{namespace}_vision_tower_images"

    def describe(self) -> list[object]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        from vqaserve.engines.vision_memo import totals

        family = CounterMetricFamily(self.name, "Pictures whose vision-tower output was reused (hit) or "
                                     "computed (miss) by the in-process engine", labels=["result"])
        for result, n in totals().items():
            family.add_metric([result], n)
        yield family
