"""`vqa serve --workers 2`: /metrics adds up both workers, whichever of them answers the scrape."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.http_support import ServeProcess, make_app, user_msg

pytestmark = pytest.mark.integration
N = 12


def chat_requests(text: str) -> tuple[float, float, set[str]]:
    """(chat requests answered 200, requests in flight, `worker` labels) from one /metrics text."""
    answered, in_flight, workers = 0.0, -1.0, set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vqa_requests_total" and s.labels["route"] == "/v1/chat/completions":
                answered += s.value if s.labels["status"] == "200" else 0
            elif s.name == "vqa_requests_in_flight":
                in_flight = s.value
            if "worker" in s.labels:  # per-process collectors (the cache's stats) name their worker
                workers.add(s.labels["worker"])
    return answered, in_flight, workers


@pytest.mark.timeout(600)
def test_metrics_count_every_worker_whichever_answers(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with ServeProcess(log, "--engine", "scripted", "--safety-image", "off", "--workers", "2") as server:
        (folder,) = re.findall(r"share metrics through (\S+) ", log.read_text())
        assert Path(folder).is_dir()  # a fresh folder for the workers' metric files
        for i in range(N):  # a new connection each: the kernel hands them to either worker
            r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [user_msg(f"q {i}")]},
                           timeout=60)
            assert r.status_code == 200, r.text
        seen: set[str] = set()
        for _ in range(200):
            scrape = httpx.get(server.url + "/metrics", timeout=30)
            assert scrape.status_code == 200
            answered, in_flight, workers = chat_requests(scrape.text)
            assert answered == N  # never only the answering worker's share
            assert in_flight == 1.0  # summed over live workers: just this scrape
            assert len(workers) == 1  # a scrape-time view is one worker's, labelled as such
            seen |= workers
            if len(seen) == 2:
                break
        assert len(seen) == 2, "every scrape was answered by the same worker"
    assert not Path(folder).exists()  # removed when `vqa serve` stopped


def test_metrics_is_documented_as_prometheus_text() -> None:
    spec = make_app().openapi()["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(spec["content"]) == ["text/plain"]
