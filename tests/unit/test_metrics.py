"""metrics.Metrics: per-instance registries and the batcher's observer entry point."""

from __future__ import annotations

import pytest

from vqaserve.metrics import Metrics

pytestmark = pytest.mark.unit


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels or None)


def test_two_instances_never_share_counts() -> None:
    a, b = Metrics(), Metrics()
    a.count_tokens(5, 3)
    assert sample(a, "vqa_tokens_total", direction="in") == 5.0
    assert sample(b, "vqa_tokens_total", direction="in") is None


def test_batcher_observer_feeds_the_documented_metrics() -> None:
    m = Metrics()
    for metric, value in [("queue_depth", 4), ("batch_size", 3), ("batch_visual_tokens", 700),
                          ("batch_seconds", 0.2), ("rejected", 1), ("queue_seconds", 0.01),
                          ("something_new", 9)]:  # an unknown name is ignored, never raised
        m.observe_batch(metric, value)
    assert sample(m, "vqa_queue_depth") == 4.0
    assert sample(m, "vqa_batch_size_sum") == 3.0
    assert sample(m, "vqa_batch_visual_tokens_count") == 1.0
    assert sample(m, "vqa_batch_seconds_count") == 1.0
    assert sample(m, "vqa_queue_rejections_total") == 1.0
    assert sample(m, "vqa_stage_seconds_count", stage="queue") == 1.0


def test_render_is_prometheus_text() -> None:
    m = Metrics()
    m.observe_request("/v1/vqa", "POST", 200, 0.05)
    text = m.render().decode()
    assert '# TYPE vqa_requests_total counter' in text
    assert 'vqa_requests_total{method="POST",route="/v1/vqa",status="200"} 1.0' in text
