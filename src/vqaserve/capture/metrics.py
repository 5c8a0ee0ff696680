"""Prometheus view of capture: a collector that reads `CaptureWriter.stats()` at scrape time.

Wiring: `metrics.add_collector(CaptureCollector(writer))`. Exported:
    vqa_capture_written_total                 records written
    vqa_capture_dropped_total{reason}         queue_full | write_failed | closed (answers are never lost:
                                              only their capture rows)
    vqa_capture_sampled_out_total             answers VQA_CAPTURE_SAMPLE left out
    vqa_capture_queue_depth                   records waiting to be written
    vqa_capture_database_up                   1 while writes succeed, 0 after a failed one
    vqa_capture_purged_total                  records deleted by retention (VQA_CAPTURE_RETENTION_DAYS)
With several workers each has its own writer: the figures carry a `worker` label (see metrics.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

from vqaserve.capture.writer import DROP_REASONS, CaptureStats


class HasCaptureStats(Protocol):
    def stats(self) -> CaptureStats: ...


class CaptureCollector:
    def __init__(self, writer: HasCaptureStats, namespace: str = "vqa", per_worker: bool = False) -> None:
        self.writer = writer
        self.ns = namespace
        self.labels = {"worker": str(os.getpid())} if per_worker else {}

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.writer.stats()
        names, values = list(self.labels), list(self.labels.values())

        def counter(name: str, doc: str, value: float) -> Any:
            family = CounterMetricFamily(f"{self.ns}_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float) -> Any:
            family = GaugeMetricFamily(f"{self.ns}_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        yield counter("capture_written", "Captured requests written to the capture database", stats.written)
        dropped = CounterMetricFamily(f"{self.ns}_capture_dropped", "Captured requests dropped (the answers "
                                      "were not affected), by reason", labels=[*names, "reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([*values, reason], stats.dropped.get(reason, 0))
        yield dropped
        yield counter("capture_sampled_out", "Answered requests VQA_CAPTURE_SAMPLE left out", stats.sampled_out)
        yield counter("capture_purged", "Captured requests deleted by retention", stats.purged)
        yield gauge("capture_queue_depth", "Captured requests waiting to be written", stats.queued)
        yield gauge("capture_database_up", "1 while capture writes succeed, 0 after a failed one",
                    1.0 if stats.database_up else 0.0)
