"""The concurrency gate: admission (429) without batching, concurrent streams, deadlines, no slot leaks."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.errors import DeadlineExceeded, EngineFailure, Overloaded, ShuttingDown
from vqaserve.pipeline import Pipeline
from vqaserve.scheduling.gate import ConcurrencyGate
from vqaserve.settings import Settings
from vqaserve.types import EngineRequest, GenerationParams, Part, Question, Turn
from vqaserve.wiring import build_components

pytestmark = pytest.mark.unit


def req(text: str, deadline: float | None = None) -> EngineRequest:
    return EngineRequest(turns=[Turn("user", [Part(text=text)])], params=GenerationParams(),
                         request_id=text, deadline=deadline)


async def test_each_request_goes_to_the_engine_at_once_not_in_batches() -> None:
    engine = ScriptedEngine()
    gate = ConcurrencyGate(engine, max_in_flight=8)
    results = await asyncio.gather(*(gate.submit(req(f"q{i} [[sleep:0.1]]"), "") for i in range(6)))
    assert [r.text for r in results] == [f"answer to: q{i} [[sleep:0.1]]" for i in range(6)]
    assert all(len(batch) == 1 for batch in engine.batches) and gate.in_flight == 0


async def test_full_gate_refuses_with_429_and_frees_slots_afterwards() -> None:
    gate = ConcurrencyGate(ScriptedEngine(), max_in_flight=2)
    slow = [asyncio.ensure_future(gate.submit(req(f"s{i} [[sleep:0.2]]"), "")) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as err:
        await gate.submit(req("one too many"), "")
    assert err.value.status == 429 and err.value.retry_after
    with pytest.raises(Overloaded):
        gate.open_stream(req("stream too"), "")
    await asyncio.gather(*slow)
    assert gate.in_flight == 0 and (await gate.submit(req("now"), "")).text == "answer to: now"


async def test_streams_run_side_by_side() -> None:
    engine = ScriptedEngine(token_delay_s=0.05)
    gate = ConcurrencyGate(engine, max_in_flight=4)

    async def consume(text: str) -> tuple[float, float]:
        t0 = time.monotonic()
        pieces = [d.text async for d in gate.open_stream(req(text), "")]
        assert "".join(pieces) == f"answer to: {text}"
        return t0, time.monotonic()

    spans = await asyncio.gather(*(consume(f"stream number {i}") for i in range(3)))
    starts, ends = zip(*spans, strict=True)
    assert max(starts) < min(ends)  # they overlapped: no stream waited for another to finish
    assert gate.in_flight == 0


async def test_deadline_and_engine_errors_release_the_slot() -> None:
    gate = ConcurrencyGate(ScriptedEngine(), max_in_flight=1)
    r = req("late [[sleep:2]]", deadline=time.monotonic() + 0.1)
    with pytest.raises(DeadlineExceeded):
        await gate.submit(r, "")
    assert r.cancel.is_set() and gate.in_flight == 0
    with pytest.raises(EngineFailure):
        await gate.submit(req("[[raise]]"), "")
    assert gate.in_flight == 0


async def test_a_stream_closed_or_dropped_before_it_started_does_not_leak_its_slot() -> None:
    gate = ConcurrencyGate(ScriptedEngine(), max_in_flight=1)
    stream = gate.open_stream(req("never read"), "")
    await stream.aclose()  # type: ignore[attr-defined]
    assert gate.in_flight == 0
    gate.open_stream(req("dropped"), "")
    gc.collect()
    assert gate.in_flight == 0


async def test_wiring_gates_engines_that_batch_themselves_and_the_pipeline_answers_through_it() -> None:
    engine = ScriptedEngine()
    engine.batches_itself = True
    settings = Settings()
    components = build_components(settings, engine)
    assert isinstance(components.batcher, ConcurrencyGate)
    pipeline = Pipeline(settings, engine, components)
    answer = await pipeline.answer(Question(turns=[Turn("user", [Part(text="hello")])]))
    assert answer.text == "answer to: hello"
    assert not isinstance(build_components(settings, ScriptedEngine()).batcher, ConcurrencyGate)


async def test_the_gate_reports_the_batchers_figures_and_its_deadlines_cover_streams() -> None:
    seen: list[tuple[str, float]] = []
    gate = ConcurrencyGate(ScriptedEngine(), max_in_flight=1, observer=lambda m, v: seen.append((m, v)))
    assert (await gate.submit(req("one"), "")).text == "answer to: one"
    names = {m for m, _ in seen}
    assert {"queue_depth", "queue_seconds", "batch_size", "batch_visual_tokens", "batch_seconds"} <= names
    assert [v for m, v in seen if m == "queue_depth"] == [1, 0] and gate.depth == 0
    held = gate.open_stream(req("held"), "")
    with pytest.raises(Overloaded, match="VQA_QUEUE_MAX=1"):
        await gate.submit(req("two"), "")
    assert ("rejected", 1) in seen
    await held.aclose()  # type: ignore[attr-defined]
    slow = req("a b c d e f g h [[sleep:5]]", deadline=time.monotonic() + 0.2)
    with pytest.raises(DeadlineExceeded):
        async for _ in gate.open_stream(slow, ""):
            pass
    assert slow.cancel.is_set() and gate.depth == 0
    await gate.close()
    with pytest.raises(ShuttingDown):
        await gate.submit(req("after close"), "")
