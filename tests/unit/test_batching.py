"""MicroBatcher with the ScriptedEngine: batch formation, backpressure, deadlines, cancellation,
fault isolation, compatibility, fairness and streaming turns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from PIL import Image

from tests.waiting import wait_until_async
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.errors import DeadlineExceeded, EngineFailure, Overloaded, ShuttingDown, VQAError
from vqaserve.scheduling.batching import MicroBatcher
from vqaserve.types import EngineRequest, EngineResult, GenerationParams, NormalizedImage, Part, Turn

pytestmark = pytest.mark.unit

SAMPLE = GenerationParams(temperature=0.7, top_p=0.8, top_k=20, seed=1)


def image(tokens_w: int, tokens_h: int) -> NormalizedImage:
    """A stand-in image whose visual-token count is tokens_w * tokens_h (pixels are not read)."""
    return NormalizedImage(image=Image.new("RGB", (2, 2)), content_hash="h", width=32 * tokens_w,
                           height=32 * tokens_h, original_size=(32 * tokens_w, 32 * tokens_h))


def req(text: str, *, rid: str | None = None, adapter: str | None = None,
        params: GenerationParams | None = None, deadline_s: float | None = None,
        images: Sequence[NormalizedImage] = ()) -> EngineRequest:
    parts = [Part(image=im) for im in images] + [Part(text=text)]
    return EngineRequest(turns=[Turn(role="user", parts=parts)], params=params or GenerationParams(),
                         adapter=adapter, request_id=rid or text,
                         deadline=None if deadline_s is None else time.monotonic() + deadline_s)


@pytest.fixture
async def engine() -> ScriptedEngine:
    return ScriptedEngine()


async def test_batches_are_bounded_by_max_batch_size(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=4, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.submit(req(f"q{i}"), "") for i in range(10)))
    assert [r.text for r in results] == [f"answer to: q{i}" for i in range(10)]
    assert sorted(len(b) for b in engine.batches) == [2, 4, 4]
    assert sorted(i for b in engine.batches for i in b) == sorted(f"q{i}" for i in range(10))
    await batcher.close()


async def test_head_waits_for_company_and_at_most_max_wait(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=2, max_wait_ms=60_000, adaptive_wait=False)
    first = asyncio.create_task(batcher.submit(req("a"), ""))
    await wait_until_async(lambda: batcher.depth == 1)  # the head is queued, waiting for company
    await asyncio.gather(first, batcher.submit(req("b"), ""))  # b fills the batch: it goes at once
    assert engine.batches == [["a", "b"]]  # the late one joined the waiting head
    await batcher.close()

    alone = MicroBatcher(engine, max_batch_size=8, max_wait_ms=150, adaptive_wait=False)
    started = time.monotonic()
    await asyncio.wait_for(alone.submit(req("c"), ""), 30)  # nobody comes: sent once max_wait is over
    assert time.monotonic() - started >= 0.14  # it did wait for company (a busy machine only adds)
    assert engine.batches[-1] == ["c"]
    await alone.close()


async def test_serial_traffic_is_not_delayed_by_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # Serial = each request arrives after the previous one finished, more than max_wait apart. The
    # batcher's clock is driven by the test (a minute between arrivals), so a wait it should skip would
    # be a minute of real waiting: the 30 s bound catches it however busy the machine is.
    from vqaserve.scheduling import batching

    now = [1000.0]
    monkeypatch.setattr(batching, "time", SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter))
    engine = ScriptedEngine()
    batcher = MicroBatcher(engine, max_batch_size=8, max_wait_ms=60_000, adaptive_wait=True)
    for i in range(3):
        now[0] += 61.0
        await asyncio.wait_for(batcher.submit(req(f"s{i}"), ""), 30)
    assert engine.batches == [["s0"], ["s1"], ["s2"]]
    await batcher.close()


async def test_concurrent_traffic_switches_waiting_back_on(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=2, max_wait_ms=60_000, adaptive_wait=True)
    await asyncio.gather(*(batcher.submit(req(f"burst{i}"), "") for i in range(4)))
    assert batcher.stats.company_expected
    first = asyncio.create_task(batcher.submit(req("x"), ""))
    await wait_until_async(lambda: batcher.depth == 1)  # x waits for company (a minute at most)
    await asyncio.gather(first, batcher.submit(req("y"), ""))
    assert engine.batches[-1] == ["x", "y"]
    await batcher.close()


async def test_full_queue_answers_429_at_once_with_retry_after(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=1, queue_max=2)
    running = asyncio.create_task(batcher.submit(req("[[sleep:0.5]] slow", rid="slow"), ""))
    await wait_until_async(lambda: engine.batches)
    queued = [asyncio.create_task(batcher.submit(req(f"w{i}"), "")) for i in range(2)]
    await wait_until_async(lambda: batcher.depth == 2)
    loop_ran = asyncio.Event()
    asyncio.get_running_loop().call_soon(loop_ran.set)
    with pytest.raises(Overloaded) as refused:
        await batcher.submit(req("one too many"), "")
    assert not loop_ran.is_set()  # refused at once: before the event loop ran anything else
    assert refused.value.status == 429
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    assert "VQA_QUEUE_MAX" in refused.value.message
    await asyncio.gather(running, *queued)  # admitted requests still complete
    assert batcher.admission.rejected == 1
    await batcher.close()


async def test_deadline_while_running_is_504_and_the_engine_stops(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=4)
    with pytest.raises(DeadlineExceeded) as late:
        await batcher.submit(req("[[sleep:5]] slow", rid="late", deadline_s=0.1), "")
    assert late.value.status == 504
    await wait_until_async(lambda: "late" in engine.stopped)
    await batcher.close()


async def test_deadline_while_queued_frees_the_slot(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=1, queue_max=1)
    running = asyncio.create_task(batcher.submit(req("[[sleep:0.4]] busy", rid="busy"), ""))
    await wait_until_async(lambda: engine.batches)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(req("queued", rid="queued", deadline_s=0.05), "")
    assert batcher.depth == 0
    follow = asyncio.create_task(batcher.submit(req("next"), ""))  # admitted: the slot is free
    await asyncio.gather(running, follow)
    assert all("queued" not in b for b in engine.batches)  # never reached the engine
    await batcher.close()


async def test_disconnect_while_running_stops_generation(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=4)
    gone = req("[[sleep:5]] never read", rid="gone")
    task = asyncio.create_task(batcher.submit(gone, ""))
    await wait_until_async(lambda: engine.batches)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone.cancel.is_set()
    await wait_until_async(lambda: "gone" in engine.stopped)  # the engine saw the stop signal
    await batcher.close()


async def test_disconnect_while_queued_never_reaches_the_engine(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=1)
    running = asyncio.create_task(batcher.submit(req("[[sleep:0.2]] busy", rid="busy"), ""))
    await wait_until_async(lambda: engine.batches)
    task = asyncio.create_task(batcher.submit(req("left", rid="left"), ""))
    await wait_until_async(lambda: batcher.depth == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert batcher.depth == 0
    await running
    await asyncio.sleep(0.05)
    assert engine.batches == [["busy"]]
    await batcher.close()


async def test_one_faulty_request_in_a_batch_of_eight_fails_alone(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=8)
    texts = [f"q{i}" for i in range(8)]
    texts[3] = "[[raise]] q3"
    outcomes = await asyncio.gather(*(batcher.submit(req(t, rid=f"r{i}"), "") for i, t in enumerate(texts)),
                                    return_exceptions=True)
    assert len(engine.batches) == 1 and len(engine.batches[0]) == 8
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], EngineFailure) and failed[0].status == 503
    assert isinstance(outcomes[3], EngineFailure)
    assert [o.text for o in outcomes if isinstance(o, EngineResult)] == \
        [f"answer to: q{i}" for i in range(8) if i != 3]
    await batcher.close()


class PoisonEngine(ScriptedEngine):
    """Raises for the whole batch when any request in it is poisoned (like a batch-wide OOM)."""

    def __init__(self) -> None:
        super().__init__()
        self.poisoned: list[str] = []

    async def generate(self, batch: Sequence[EngineRequest]) -> list[EngineResult | VQAError]:
        if any("[[poison]]" in r.turns[-1].text for r in batch):
            self.poisoned.extend(r.request_id for r in batch)
            raise RuntimeError("CUDA out of memory at 0x7f00deadbeef")
        return await super().generate(batch)


async def test_an_engine_that_raises_for_a_batch_fails_that_batch_only() -> None:
    """Engines isolate a failing request themselves (one error per request); one that raises for
    a whole batch fails exactly that batch's requests, with nothing internal in the message, and
    the scheduler goes on with the next batch."""
    engine = PoisonEngine()
    batcher = MicroBatcher(engine, max_batch_size=4, max_wait_ms=50)
    texts = [f"q{i}" for i in range(8)]
    texts[5] = "[[poison]] q5"
    outcomes = await asyncio.gather(*(batcher.submit(req(t, rid=f"r{i}"), "") for i, t in enumerate(texts)),
                                    return_exceptions=True)
    failed = {f"r{i}" for i, o in enumerate(outcomes) if isinstance(o, EngineFailure)}
    assert "r5" in failed and failed == set(engine.poisoned) and len(failed) <= 4
    for o in outcomes:
        assert isinstance(o, EngineResult) or "0x7f" not in o.message and "CUDA" not in o.message
    assert [o.text for o in outcomes if isinstance(o, EngineResult)] == \
        [f"answer to: q{i}" for i in range(8) if f"r{i}" not in failed]
    assert (await batcher.submit(req("after"), "")).text == "answer to: after"
    await batcher.close()


async def test_incompatible_requests_never_share_a_batch(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=16, max_wait_ms=50)
    kinds = {"base-greedy": ("", None, GenerationParams()),
             "lora-greedy": ("sunglasses", "sunglasses", GenerationParams()),
             "base-sample": ("", None, SAMPLE),
             "base-sample2": ("", None, GenerationParams(temperature=0.7, top_p=0.8, top_k=20, seed=2))}
    group_of: dict[str, str] = {}
    calls = []
    for i in range(24):
        kind = list(kinds)[i % len(kinds)]
        key, adapter, params = kinds[kind]
        group_of[f"r{i}"] = kind
        calls.append(batcher.submit(req(f"q{i}", rid=f"r{i}", adapter=adapter, params=params), key))
    await asyncio.gather(*calls)
    assert sum(len(b) for b in engine.batches) == 24
    for batch in engine.batches:
        assert len({group_of[rid] for rid in batch}) == 1, batch
    assert len(engine.batches) == 4  # and compatible ones did share
    await batcher.close()


async def test_many_large_images_do_not_starve_small_requests(engine: ScriptedEngine) -> None:
    # Budget 3000 visual tokens; a "large" request has two 1280-token images (2560 tokens).
    batcher = MicroBatcher(engine, max_batch_size=16, max_batch_visual_tokens=3000)
    blocker = asyncio.create_task(batcher.submit(req("[[sleep:0.2]] busy", rid="busy"), ""))
    await wait_until_async(lambda: engine.batches)
    large = [req(f"L{i}", images=[image(40, 32), image(40, 32)]) for i in range(3)]
    small = [req(f"S{i}", images=[image(8, 8)]) for i in range(4)]
    calls = [batcher.submit(r, "") for r in large] + [batcher.submit(r, "") for r in small]
    await asyncio.gather(blocker, *calls)
    batches = engine.batches[1:]
    assert batches[0] == ["L0", "S0", "S1", "S2", "S3"]  # small ones ride with the first large one
    assert batches[1:] == [["L1"], ["L2"]]  # large ones keep their FIFO turn, one per budget
    await batcher.close()


async def test_fifo_across_groups(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=16)
    blocker = asyncio.create_task(batcher.submit(req("[[sleep:0.2]] busy", rid="busy"), ""))
    await wait_until_async(lambda: engine.batches)
    order = [("A1", None), ("B1", "lora"), ("A2", None), ("C1", "other"), ("B2", "lora")]
    calls = [batcher.submit(req(rid, adapter=ad), ad or "") for rid, ad in order]
    await asyncio.gather(blocker, *calls)
    assert engine.batches[1:] == [["A1", "A2"], ["B1", "B2"], ["C1"]]  # by the oldest waiting request
    await batcher.close()


async def test_a_stream_is_a_row_and_a_disconnect_stops_it() -> None:
    engine = ScriptedEngine(token_delay_s=0.05)
    batcher = MicroBatcher(engine, max_batch_size=8)
    deltas = [d async for d in batcher.open_stream(req("tell me", rid="s1"), "")]
    assert "".join(d.text for d in deltas) == "answer to: tell me"
    assert deltas[-1].finish_reason == "stop"

    reader = batcher.open_stream(req("a much longer answer is coming here", rid="s2"), "")
    first = await reader.__anext__()
    assert first.text
    await reader.aclose()  # the client disconnected
    await wait_until_async(lambda: "s2" in engine.stopped)
    assert (await batcher.submit(req("after"), "")).text == "answer to: after"
    await batcher.close()


async def test_streams_and_answers_share_one_batch() -> None:
    class Counting(ScriptedEngine):
        def __init__(self) -> None:
            super().__init__()
            self.stream_batches: list[list[bool]] = []

        async def generate_streams(self, batch, sinks):  # type: ignore[no-untyped-def]
            self.stream_batches.append([s is not None for s in sinks])
            return await super().generate_streams(batch, sinks)

    engine = Counting()
    batcher = MicroBatcher(engine, max_batch_size=4, max_wait_ms=200, adaptive_wait=False)
    readers = [batcher.open_stream(req(f"s{i}", rid=f"s{i}"), "") for i in range(2)]
    plain = asyncio.ensure_future(batcher.submit(req("p", rid="p"), ""))

    async def text(reader) -> str:  # type: ignore[no-untyped-def]
        return "".join([d.text async for d in reader])

    assert await asyncio.gather(*(text(r) for r in readers)) == ["answer to: s0", "answer to: s1"]
    assert (await plain).text == "answer to: p"
    assert engine.stream_batches == [[True, True, False]]  # one batch, two of its rows streaming
    await batcher.close()


async def test_full_queue_refuses_a_stream_before_it_starts(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=1, queue_max=1)
    running = asyncio.create_task(batcher.submit(req("[[sleep:0.2]] busy"), ""))
    await wait_until_async(lambda: engine.batches)
    waiting = asyncio.create_task(batcher.submit(req("waiting"), ""))
    await wait_until_async(lambda: batcher.depth == 1)
    with pytest.raises(Overloaded):
        batcher.open_stream(req("stream"), "")
    await asyncio.gather(running, waiting)
    await batcher.close()


async def test_observer_sees_queue_depth_and_batch_sizes(engine: ScriptedEngine) -> None:
    seen: list[tuple[str, float]] = []
    batcher = MicroBatcher(engine, max_batch_size=4, observer=lambda m, v: seen.append((m, v)))
    await asyncio.gather(*(batcher.submit(req(f"q{i}"), "") for i in range(4)))
    assert ("batch_size", 4) in seen
    assert max(v for m, v in seen if m == "queue_depth") == 4
    assert any(m == "batch_seconds" and v >= 0 for m, v in seen)
    waits = [v for m, v in seen if m == "queue_seconds"]
    assert len(waits) == 4 and all(v >= 0 for v in waits)  # the "queue" stage of /metrics
    await batcher.close()


async def test_close_fails_waiting_requests_and_refuses_new_ones(engine: ScriptedEngine) -> None:
    batcher = MicroBatcher(engine, max_batch_size=1)
    running = asyncio.create_task(batcher.submit(req("[[sleep:2]] busy"), ""))
    await wait_until_async(lambda: engine.batches)
    waiting = asyncio.create_task(batcher.submit(req("waiting"), ""))
    await wait_until_async(lambda: batcher.depth == 1)
    await batcher.close()
    for task in (running, waiting):  # nobody is left hanging: in flight and queued both answered
        with pytest.raises(ShuttingDown):
            await task
    with pytest.raises(ShuttingDown):
        await batcher.submit(req("late"), "")


def test_bad_sizes_are_refused_with_the_setting_name() -> None:
    with pytest.raises(ValueError, match="VQA_BATCH_MAX_SIZE"):
        MicroBatcher(ScriptedEngine(), max_batch_size=0)
