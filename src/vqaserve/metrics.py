"""Prometheus metrics, one `Metrics` object (with its own CollectorRegistry) per app.

Several apps in one process (tests) must not clash, so nothing is registered globally (in the
multiprocess mode below, one app per process). The app
creates one `Metrics`, keeps it in its AppState (server/state.py) and passes it to `wiring.build_pipeline`,
which wires `Components.observe` to `observe_stage` and the batcher's observer to `observe_batch`.

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
    metrics.observe_answer(model, cache, s, confidence, review)
                                            an answer given, by the model that answered (the pipeline's
                                            Components.answered): vqa_answers_total{model,cache},
                                            vqa_answer_seconds{model}, vqa_answer_confidence{model}
                                            (when known) and vqa_answers_flagged_total{model} (under
                                            VQA_REVIEW_BELOW: for review, or hand-off to a person)
    metrics.count_tokens(prompt, completion)
    metrics.count_feedback(model, rating)   a rating posted to /v1/feedback, by the model that gave the answer
                                            (vqa_feedback_total{model,rating}; a replaced rating counts again)
    metrics.safety_blocks.labels(stage="input"|"output").inc()
    metrics.engine_errors.labels(code="engine_failure"|...).inc()
    metrics.add_collector(collector)        a collector read at scrape time (wiring: the cache's stats)
    metrics.watch_breakers({name: breaker}) vqa_breaker_state{backend} (0 closed, 1 open, 2 half-open)
                                            and vqa_breaker_opens_total{backend} (wiring: the engine's)
    vqa_vision_tower_images_total{result="hit"|"miss"}  pictures whose vision-tower output was reused
                                            or computed (read from engines.vision_memo at scrape time)
Request counts and latencies per route are recorded by the app's access middleware.

The `model` label names the weights that answered, as the `x-vqa-model` header does (Question.served_by):
the base model by its name (`shop-toy`), an adapter by its version, `NAME@FINGERPRINT`
(`v2@3f2a9c1b0d4e5f67`, engines/adapters.py). A canary's two sides are two values, and a reloaded
adapter is a new value: its figures never mix with its predecessor's. Every per-model figure
(answers, latency, confidence, thumbs) uses this label name and value.

Several worker processes (`vqa serve --workers N`): each has its own app and Metrics, so a scrape
would see only the worker that answered it. `vqa serve` sets PROMETHEUS_MULTIPROC_DIR to a fresh
folder before the workers start; prometheus_client then keeps every value in a file there per
process, and `render()` adds up all of them (MultiProcessCollector). Collectors that read state at
scrape time (`add_collector`: the cache's stats, the vision memo) can only see their own process:
there they carry a `worker` label (the pid) instead of pretending to be the total.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from vqaserve.breaker import CircuitBreaker

# prometheus_client reads these when it is imported; the multiprocess mode follows the same test.
MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")

# Stage latencies span ~0.1 ms (L1 cache) to minutes (CPU generation).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# Confidence (confidence.py) is in 0..1; the cut-offs a shop is likely to choose for VQA_REVIEW_BELOW
# (0.3..0.9) fall on bucket edges, so the share an answer threshold would flag can be read off.
CONFIDENCE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, namespace: str = "vqa") -> None:
        self.multiprocess_dir = next((os.environ[k] for k in MULTIPROC_ENV if os.environ.get(k)), None)
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        self._scrape_time: list[Collector] = []
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
        # Gauges with several workers: each worker has its own queue and connections, so the
        # service's figure is the sum over the workers alive ("livesum": a dead worker's last value
        # must not linger). Compare with N x VQA_QUEUE_MAX / VQA_MAX_CONNECTIONS, the caps being
        # per worker. (A single process ignores multiprocess_mode.)
        self.queue_depth = Gauge("queue_depth", "Requests waiting for the engine", namespace=ns,
                                 registry=r, multiprocess_mode="livesum")
        self.cache = Counter("cache_lookups", "Answer cache results", ["result"], namespace=ns,
                             registry=r)
        self.answers = Counter("answers", "Answers given, by the model (adapter version) that answered and "
                               "cache result", ["model", "cache"], namespace=ns, registry=r)
        self.answer_latency = Histogram("answer_seconds", "Seconds from a request reaching the pipeline to "
                                        "its answer (a stream: its last piece), by the model that answered",
                                        ["model"], namespace=ns, registry=r, buckets=STAGE_BUCKETS)
        self.feedback = Counter("feedback", "Ratings posted for captured answers (POST /v1/feedback), by the model "
                                "(adapter version) that answered and the rating", ["model", "rating"],
                                namespace=ns, registry=r)
        self.answer_confidence = Histogram("answer_confidence", "Confidence of the answers given (the "
                                           "probability of the answer's least probable token), by the model "
                                           "that answered", ["model"], namespace=ns, registry=r,
                                           buckets=CONFIDENCE_BUCKETS)
        self.answers_flagged = Counter("answers_flagged", "Answers under VQA_REVIEW_BELOW (flagged for review, "
                                       "or hand-off to a person), by the model that answered", ["model"],
                                       namespace=ns, registry=r)
        self.safety_blocks = Counter("safety_blocks", "Requests or answers blocked by safety checks",
                                     ["stage"], namespace=ns, registry=r)
        self.engine_errors = Counter("engine_errors", "Engine failures by error code", ["code"],
                                     namespace=ns, registry=r)
        self.in_flight = Gauge("requests_in_flight", "HTTP requests being handled", namespace=ns,
                               registry=r, multiprocess_mode="livesum")
        self.add_collector(_VisionTowerCollector(ns))

    def add_collector(self, collector: Collector) -> None:
        """A collector that reads its process's state at scrape time (cache stats, vision memo)."""
        self._scrape_time.append(collector)
        self.registry.register(collector)

    def watch_breakers(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        """Export circuit breakers (wiring: the engine's, e.g. the upstream model server's)."""
        if breakers:
            self.add_collector(_BreakerCollector(self.namespace, dict(breakers)))

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

    def observe_answer(self, model: str, cache: str, seconds: float, confidence: float | None = None,
                       review: bool = False) -> None:
        self.answers.labels(model=model, cache=cache).inc()
        self.answer_latency.labels(model=model).observe(seconds)
        if confidence is not None:
            self.answer_confidence.labels(model=model).observe(confidence)
        if review:
            self.answers_flagged.labels(model=model).inc()

    def count_feedback(self, model: str, rating: str) -> None:
        self.feedback.labels(model=model, rating=rating).inc()

    def count_cache(self, status: str) -> None:
        self.cache.labels(result=status).inc()

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.tokens.labels(direction="in").inc(prompt)
        self.tokens.labels(direction="out").inc(completion)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.request_latency.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # every worker's files, added up
        for collector in self._scrape_time:
            registry.register(_ThisWorker(collector))
        return generate_latest(registry)

    def close(self) -> None:
        """At the app's shutdown: this worker's live gauges leave the sums (counters stay counted)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)


def _forget_dead_workers(path: str) -> None:
    """A worker that was killed never ran `close()`: drop its live gauges, or its last in-flight and
    queue figures would stay in the sums until the service restarts."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)
        except PermissionError:  # alive, under another user
            continue


class _ThisWorker:
    """A scrape-time collector's families with a `worker` label: its figures are one process's."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        worker = str(os.getpid())
        for family in self.collector.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                out.add_sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
            yield out


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


class _BreakerCollector:
    """Circuit breakers' state and opens, read at scrape time (breaker.py knows nothing of metrics)."""

    def __init__(self, namespace: str, breakers: dict[str, CircuitBreaker]) -> None:
        self.namespace = namespace
        self.breakers = breakers

    def describe(self) -> list[object]:
        return []

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(f"{self.namespace}_breaker_state", "Circuit breaker of a backend: "
                                  "0 closed, 1 open (failing fast), 2 half-open (probing)", labels=["backend"])
        opens = CounterMetricFamily(f"{self.namespace}_breaker_opens", "Times a backend's circuit "
                                    "breaker opened", labels=["backend"])
        for name, breaker in self.breakers.items():
            state.add_metric([name], breaker.state_number)
            opens.add_metric([name], breaker.opens)
        yield state
        yield opens
