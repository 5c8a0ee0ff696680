"""`vqa serve`'s app capturing into a real PostgreSQL server (tests/postgres_fixture.py), and that
server stopped mid-run: every answer is still a 200, the rows that could not be written are counted in
/metrics, the review routes answer 503 without the database's address, and capture resumes by itself
when the database is back."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.capture_http_support import stored, wait_stored
from tests.conftest import image_bytes
from tests.http_support import assert_openai_error, make_app, sse_payloads
from tests.integration.test_capture_http import chat
from tests.postgres_fixture import PostgresServer
from vqaserve.server.state import app_state

pytestmark = pytest.mark.integration


def figures(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    out = {}
    for name in ("written_total", "queue_depth", "database_up"):
        out[name] = float(re.search(rf"^vqa_capture_{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    out["write_failed"] = float(re.search(r'^vqa_capture_dropped_total\{reason="write_failed"\} (\S+)$',
                                          text, re.M).group(1))  # type: ignore[union-attr]
    return out


@pytest.fixture
def database() -> Iterator[PostgresServer]:
    server = PostgresServer().start()  # its own server: this test stops it
    try:
        yield server
    finally:
        server.remove()


def answer_three_ways(client: TestClient, n: int) -> list[str]:
    """A plain answer, a stream and a /v1/vqa answer; each must be a 200 whatever the database does."""
    plain = chat(client, f"plain {n}", colour=(n, 10, 10))
    streamed = chat(client, f"stream {n}", colour=(n, 20, 20), stream=True)
    form = client.post("/v1/vqa", files={"image": ("p.png", image_bytes(color=(n, 30, 30)), "image/png")},
                       data={"question": f"form {n}"})
    assert (plain.status_code, streamed.status_code, form.status_code) == (200, 200, 200)
    assert sse_payloads(streamed.text)[-1] == "[DONE]" and "error" not in streamed.text
    return [plain.json()["id"], sse_payloads(streamed.text)[0]["id"], form.json()["request_id"]]


def test_a_stopped_database_costs_capture_rows_never_answers(database: PostgresServer) -> None:
    url = database.create_database("capture")
    with TestClient(make_app(capture_url=url)) as client:
        writer = app_state(client.app).capture  # type: ignore[arg-type]
        assert writer is not None
        writer.retry_s = 0.5  # how long writing pauses after a failure (5 s by default): shortened for the test
        before = answer_three_ways(client, 1)
        wait_stored(url, before)
        assert figures(client)["database_up"] == 1

        database.stop()
        during = [i for n in range(2, 6) for i in answer_three_ways(client, n)]
        deadline = time.monotonic() + 30
        while (seen := figures(client))["write_failed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen["write_failed"] > 0 and seen["database_up"] == 0
        # every answer is either written, dropped and counted, or still waiting for the database
        assert seen["written_total"] + seen["write_failed"] + seen["queue_depth"] == len(before) + len(during)
        error = assert_openai_error(client.get("/v1/captures"), 503)
        assert error["code"] == "capture_unavailable" and "postgresql" not in error["message"]
        assert_openai_error(client.post("/v1/feedback", json={"id": before[0], "rating": "up"}), 503)

        database.start()
        after = answer_three_ways(client, 9)
        wait_stored(url, after)  # written again without a restart
        end = figures(client)
        assert end["database_up"] == 1
        kept = {r.id for r in stored(url)}
        lost = int(end["write_failed"])
        assert set(before) | set(after) <= kept
        assert len(kept & set(during)) == len(during) - lost  # exactly the rows counted as dropped are missing
        rated = client.post("/v1/feedback", json={"id": after[0], "rating": "down", "correction": "a hat"})
        assert rated.status_code == 200
