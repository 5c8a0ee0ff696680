"""The pieces of capture on the service that need no server: the record of an adapter's answer, a
stream's record from what it passed on, the review views as store queries, and query dates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import pytest

from vqaserve.capture import record_for
from vqaserve.server.capture_hook import _Tapped
from vqaserve.server.routes_capture import _utc, query_of, served_by
from vqaserve.types import Answer, Part, Question, StreamDelta, Turn, Usage

pytestmark = pytest.mark.unit


def question(adapter: str | None) -> Question:
    q = Question(turns=[Turn(role="user", parts=[Part(text="What is it?")])], model="v2")
    q.answered_by, q.adapter = ("v2", adapter) if adapter else ("shop-toy", None)
    return q


@pytest.mark.parametrize(("version", "name", "fingerprint"), [
    ("v2@3f2a9c1b0d4e5f67", "v2", "3f2a9c1b0d4e5f67"), ("v2", "v2", ""), (None, None, "")])
def test_an_answers_adapter_is_kept_by_name_with_its_digest_beside_it(version: str | None, name: str | None,
                                                                       fingerprint: str) -> None:
    q = question(version)
    answer = Answer(text="sunglasses", model=q.answered_by, served_by=q.served_by, confidence=0.4)
    r = record_for(q, answer, response_id="chatcmpl-1", model="shop-toy", latency_ms=3.0,
                   confidence=answer.confidence)
    assert (r.model, r.adapter, r.adapter_fingerprint, r.confidence) == ("shop-toy", name, fingerprint, 0.4)
    assert served_by(r) == q.served_by  # the metrics label of a rating is the answer's x-vqa-model


async def test_a_tapped_stream_passes_everything_on_and_keeps_the_text_and_the_last_delta() -> None:
    deltas = [StreamDelta(text="sun"), StreamDelta(text="glasses"),
              StreamDelta(text="", finish_reason="stop", usage=Usage(3, 2), confidence=0.8)]
    closed: list[bool] = []

    class Source:
        def __init__(self) -> None:
            self.it: AsyncIterator[StreamDelta] = self._gen()

        async def _gen(self) -> AsyncIterator[StreamDelta]:
            for d in deltas:
                yield d

        def __aiter__(self) -> Source:
            return self

        async def __anext__(self) -> StreamDelta:
            return await self.it.__anext__()

        async def aclose(self) -> None:
            closed.append(True)

    tap = _Tapped(Source())
    assert [d async for d in tap] == deltas
    await tap.aclose()
    assert "".join(tap.pieces) == "sunglasses" and tap.final is deltas[-1] and closed == [True]


@pytest.mark.parametrize(("view", "below", "expected"), [
    ("review", None, {"confidence_below": 0.5, "rating": "down", "either": True}),
    ("flagged", None, {"confidence_below": 0.5, "rating": None, "either": False}),
    ("low", 0.2, {"confidence_below": 0.2, "rating": None}),
    ("low", None, {"confidence_below": 0.5}),
    ("down", None, {"confidence_below": None, "rating": "down"}),
    ("rated", None, {"rated": True, "rating": None, "confidence_below": None}),
    ("all", None, {"rated": False, "rating": None, "confidence_below": None}),
])
def test_each_review_view_is_one_store_query(view: str, below: float | None, expected: dict[str, object]) -> None:
    query = query_of(view, 0.5, below, model="shop-toy", limit=20)  # type: ignore[arg-type]
    assert {k: getattr(query, k) for k in expected} == expected
    assert (query.model, query.limit) == ("shop-toy", 20)


def test_query_dates_are_utc_and_a_bare_until_date_is_the_whole_day() -> None:
    assert _utc(date(2026, 12, 1)) == datetime(2026, 12, 1, tzinfo=UTC)
    assert _utc(date(2026, 12, 1), end_of_day=True) == datetime(2026, 12, 2, tzinfo=UTC)
    assert _utc(date.max, end_of_day=True) == datetime(9999, 12, 31, tzinfo=UTC)  # no overflow
    assert _utc(datetime(2026, 12, 1, 14, 30)) == datetime(2026, 12, 1, 14, 30, tzinfo=UTC)
    east = datetime.fromisoformat("2026-12-01T08:00:00+08:00")
    assert _utc(east) == datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    assert _utc(datetime.fromisoformat("0001-01-01T00:00:00+05:00")) == datetime.min.replace(tzinfo=UTC)
