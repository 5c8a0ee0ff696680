"""metrics.Metrics: per-instance registries, the batcher's observer entry point, several workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


# A worker of `vqa serve --workers N`: records one request and `in_flight` requests in flight,
# then waits; a line on stdin makes it shut down as the app's lifespan does (Metrics.close()).
WORKER = """
import sys
from vqaserve.metrics import Metrics
m = Metrics()
m.observe_request("/v1/vqa", "POST", 200, 0.01)
m.in_flight.inc(int(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
m.close()
"""


def scrape(m: Metrics) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"vqa_requests_total", "vqa_requests_in_flight"}
    return {s.name: s.value for fam in text_string_to_metric_families(m.render().decode())
            for s in fam.samples if s.name in wanted}


def test_several_worker_processes_add_up_and_dead_ones_leave_the_live_gauges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import subprocess_env

    env = subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for n in (2, 3)]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        m = Metrics()  # this process renders what the workers wrote
        assert scrape(m) == {"vqa_requests_total": 2.0, "vqa_requests_in_flight": 5.0}
        workers[1].kill()  # killed: it never ran close()
        workers[1].wait()
        assert scrape(m) == {"vqa_requests_total": 2.0, "vqa_requests_in_flight": 2.0}
        workers[0].communicate("stop\n", timeout=30)  # a clean shutdown
        assert workers[0].returncode == 0
        assert scrape(m).get("vqa_requests_in_flight", 0.0) == 0.0
        assert scrape(m)["vqa_requests_total"] == 2.0  # counts of finished workers stay counted
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
