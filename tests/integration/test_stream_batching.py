"""Streams batch (issue 22, part 2): concurrent streams share one generate() on the tiny Qwen3-VL,
each gets its own answer (equal to the non-streamed one), and a disconnect or a deadline stops one
row without disturbing the others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_vlm import QUESTIONS, four_pictures, ok, request, started_engine

from vqaserve.engines.transformers import TransformersEngine
from vqaserve.errors import DeadlineExceeded
from vqaserve.scheduling.batching import MicroBatcher
from vqaserve.types import EngineRequest, NormalizedImage, StreamDelta

pytestmark = pytest.mark.integration

LONG = 120  # tokens: long enough that a row stopped after its first delta is visibly short


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    yield from started_engine(tiny_model_dir)


@pytest.fixture(scope="module")
def pictures() -> list[NormalizedImage]:
    return four_pictures()


@pytest.fixture
def calls(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every model.generate() call."""
    sizes: list[int] = []
    real = engine._model.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        sizes.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine._model, "generate", counting)
    return sizes


def requests(pictures: list[NormalizedImage], **params: Any) -> list[EngineRequest]:
    return [request(q, im, rid=f"row{i}", **params)
            for i, (q, im) in enumerate(zip(QUESTIONS, pictures, strict=True))]


async def drain(reader: AsyncIterator[StreamDelta]) -> list[StreamDelta]:
    return [d async for d in reader]


async def test_concurrent_streams_share_one_generate(engine: TransformersEngine,
                                                     pictures: list[NormalizedImage],
                                                     calls: list[int]) -> None:
    alone = [ok((await engine.generate([r]))[0]) for r in requests(pictures)]
    calls.clear()
    batcher = MicroBatcher(engine, max_batch_size=8, max_wait_ms=200)
    readers = [batcher.open_stream(r, "") for r in requests(pictures)]
    streamed = await asyncio.gather(*(drain(r) for r in readers))
    assert calls == [len(QUESTIONS)]  # one batched generate for all the streams
    for deltas, answer in zip(streamed, alone, strict=True):
        assert "".join(d.text for d in deltas) == answer.text
        assert (deltas[-1].finish_reason, deltas[-1].usage) == (answer.finish_reason, answer.usage)
        assert all(d.finish_reason is None for d in deltas[:-1])
    assert len({a.text for a in alone}) > 1  # the rows really differ
    assert sum(len(d) > 2 for d in streamed) >= 2  # and arrived in pieces, not whole
    await batcher.close()


async def long_rows(engine: TransformersEngine, pictures: list[NormalizedImage],
                    calls: list[int]) -> tuple[list[str], MicroBatcher, list[EngineRequest]]:
    """Each long row's answer alone, then a fresh batcher and the same rows again to stream together."""
    alone = [ok((await engine.generate([r]))[0]).text
             for r in requests(pictures, max_new_tokens=LONG, ignore_eos=True)]
    calls.clear()
    return alone, MicroBatcher(engine, max_batch_size=8, max_wait_ms=200), \
        requests(pictures, max_new_tokens=LONG, ignore_eos=True)


async def test_a_disconnected_stream_stops_alone(engine: TransformersEngine,
                                                 pictures: list[NormalizedImage],
                                                 calls: list[int]) -> None:
    alone, batcher, rows = await long_rows(engine, pictures, calls)
    readers = [batcher.open_stream(r, "") for r in rows]
    others = asyncio.gather(*(drain(r) for r in readers[1:]))
    assert (await readers[0].__anext__()).text
    await readers[0].aclose()  # the client went away
    assert rows[0].cancel.is_set()
    streamed = await others
    assert calls == [len(QUESTIONS)]
    assert ["".join(d.text for d in deltas) for deltas in streamed] == alone[1:]
    assert all(engine.generated_tokens[r.request_id] == LONG for r in rows[1:])
    assert engine.generated_tokens["row0"] < LONG  # its row stopped; the others went on
    await batcher.close()


async def test_a_stream_past_its_deadline_fails_alone(engine: TransformersEngine,
                                                      pictures: list[NormalizedImage],
                                                      calls: list[int]) -> None:
    alone, batcher, rows = await long_rows(engine, pictures, calls)
    late = rows[0]
    late.deadline = time.monotonic() + 60
    readers = [batcher.open_stream(r, "") for r in rows]
    others = asyncio.gather(*(drain(r) for r in readers[1:]), return_exceptions=True)
    assert (await readers[0].__anext__()).text
    late.deadline = time.monotonic()  # its deadline passes while the batch is generating
    with pytest.raises(DeadlineExceeded):
        await drain(readers[0])
    results = [None, *await others]
    assert ["".join(d.text for d in deltas) for deltas in results[1:]] == alone[1:]  # type: ignore[union-attr]
    assert calls == [len(QUESTIONS)]
    assert engine.generated_tokens["row0"] < LONG
    await batcher.close()
