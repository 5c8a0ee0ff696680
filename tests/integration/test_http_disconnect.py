"""A client that goes away mid-stream stops its generation (HOSTILE_INPUTS case 33), on real uvicorn."""

from __future__ import annotations

import httpx
import pytest

from tests.http_support import LiveServer, RecordingEngine, make_app, user_msg
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def test_closing_a_stream_tells_the_engine_to_stop() -> None:
    engine = RecordingEngine(model_id="scripted", token_delay_s=0.05)
    long_answer = " ".join(f"w{i}" for i in range(400))  # ~20 s if nobody stopped it
    with LiveServer(make_app(engine)) as live, httpx.Client(base_url=live.url, timeout=10) as client:
        body = {"stream": True, "messages": [user_msg(f"[[say:{long_answer}]]")]}
        with client.stream("POST", "/v1/chat/completions", json=body,
                           headers={"x-request-id": "walk-away"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert any("w1" in line for line in received)
        # the connection is closed: the request's stop signal must be set soon after
        wait_until(lambda: engine.requests and engine.requests[0].cancel.is_set(), 5,
                   "generation told to stop")
        assert engine.requests[0].request_id == "walk-away"
        # and the server keeps serving
        assert client.get("/health").status_code == 200
