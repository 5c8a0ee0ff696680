"""The capture writer keeps capture off the request path, against real databases: a stopped, paused
or unreachable PostgreSQL loses only capture rows (counted), and `submit` never waits for it."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from tests.capture_helpers import BACKENDS, ago, make_store, picture, record
from tests.conftest import free_port
from tests.postgres_fixture import PostgresServer
from tests.waiting import wait_until_async
from vqaserve.capture import CaptureQuery, CaptureWriter, make_feedback, open_store
from vqaserve.capture.metrics import CaptureCollector
from vqaserve.capture.writer import sampled

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", BACKENDS)
async def test_what_is_submitted_is_written_with_its_pictures_once(kind: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    writer = CaptureWriter(make_store(kind, tmp_path, request), flush_interval_s=0.02)
    await writer.start()
    red, blue = picture((200, 0, 0)), picture((0, 0, 200))
    for i in range(10):
        assert writer.submit(record(f"r{i}", pictures=(red if i % 2 else blue,)))
    await writer.close()
    assert writer.stats().written == 10 and sum(writer.stats().dropped.values()) == 0
    store = make_store(kind, tmp_path, request)
    assert await store.count(CaptureQuery()) == 10
    assert await store.missing_pictures([red.content_hash, blue.content_hash]) == set()
    await store.close()


async def test_images_off_keeps_the_hash_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    writer = CaptureWriter(open_store(url), images=False, flush_interval_s=0.02)
    await writer.start()
    red = picture((200, 0, 0))
    writer.submit(record("r", pictures=(red,)))
    await writer.close()
    store = open_store(url)
    assert (await store.get("r")).image_hashes == (red.content_hash,)
    assert await store.picture(red.content_hash) is None
    await store.close()


def test_submit_is_not_a_coroutine() -> None:
    assert not inspect.iscoroutinefunction(CaptureWriter.submit)


async def test_a_dead_database_costs_only_capture_rows_and_the_writer_comes_back(tmp_path: Path) -> None:
    server = PostgresServer().start()
    try:
        url = server.create_database("capture")
        writer = CaptureWriter(open_store(url), flush_interval_s=0.02, retry_s=0.3)
        await writer.start()
        writer.submit(record("before"))
        await wait_until_async(lambda: writer.stats().written == 1)
        server.stop()
        # No await between these submits: the writer task cannot run, so nothing here touched the
        # database; every record is queued at once.
        accepted = [writer.submit(record(f"down-{i}")) for i in range(10)]
        assert all(accepted) and writer.stats().queued == 10
        await wait_until_async(lambda: writer.stats().dropped["write_failed"] == 10)
        assert writer.stats().database_up is False
        server.start()  # same port, same data
        await asyncio.sleep(0.35)  # past retry_s: the next batch is tried again
        writer.submit(record("after"))
        await wait_until_async(lambda: writer.stats().written == 2)
        assert writer.stats().database_up is True
        await writer.close()
        store = open_store(url)
        assert [r.id for r in await store.query(CaptureQuery())] == ["after", "before"]
        await store.close()
    finally:
        server.remove()


async def test_a_hung_database_times_out_and_close_gives_up_in_time() -> None:
    server = PostgresServer().start()
    try:
        url = server.create_database("capture")
        writer = CaptureWriter(open_store(url), flush_interval_s=0.02, write_timeout_s=0.5, retry_s=60)
        await writer.start()
        writer.submit(record("first"))
        await wait_until_async(lambda: writer.stats().written == 1)
        server.pause()  # the server and its connections stop answering, as a hung host does
        writer.submit(record("hung"))
        await wait_until_async(lambda: writer.stats().dropped["write_failed"] == 1)
        for i in range(3):
            writer.submit(record(f"queued-{i}"))  # paused for retry_s: they wait in the queue
        await writer.close(timeout_s=0.5)
        stats = writer.stats()
        assert stats.dropped["write_failed"] + stats.dropped["closed"] == 4 and stats.queued == 0
    finally:
        server.remove()


async def test_an_unreachable_port_drops_and_counts() -> None:
    writer = CaptureWriter(open_store(f"postgresql://vqa@127.0.0.1:{free_port()}/x"), flush_interval_s=0.02,
                           retry_s=60)
    await writer.start()
    for i in range(3):
        writer.submit(record(f"r{i}"))
    await wait_until_async(lambda: writer.stats().dropped["write_failed"] == 3)
    await writer.close(timeout_s=1)
    assert writer.stats().written == 0


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    writer = CaptureWriter(open_store(f"sqlite:///{tmp_path / 'c.db'}"), queue_max=3)  # not started: nothing drains
    assert [writer.submit(record(f"r{i}")) for i in range(5)] == [True, True, True, False, False]
    big = CaptureWriter(open_store(f"sqlite:///{tmp_path / 'd.db'}"), queue_max_bytes=100_000)
    red = picture((1, 1, 1), size=(200, 100))  # 60 kB of pixels
    assert [big.submit(record(f"p{i}", pictures=(red,))) for i in range(2)] == [True, False]
    assert writer.stats().dropped["queue_full"] == 2 and big.stats().dropped["queue_full"] == 1
    for w in (writer, big):
        await w.close(timeout_s=1)
    assert writer.stats().dropped["closed"] == 3  # never started: what was queued is counted as lost


async def test_refused_answers_and_sampled_out_ones_are_not_kept(tmp_path: Path) -> None:
    writer = CaptureWriter(open_store(f"sqlite:///{tmp_path / 'c.db'}"), sample=0.5)
    assert writer.submit(record("blocked", finish_reason="content_filter")) is False
    kept = [writer.submit(record(f"id-{i}")) for i in range(400)]
    assert writer.stats().refused == 1 and writer.stats().sampled_out == kept.count(False)
    assert 150 < kept.count(True) < 250
    await writer.close(timeout_s=1)


def test_sampling_is_stable_per_id_and_follows_the_fraction() -> None:
    ids = [f"chatcmpl-{i}" for i in range(20_000)]
    first = [sampled(i, 0.1) for i in ids]
    assert first == [sampled(i, 0.1) for i in ids]
    assert 0.09 < sum(first) / len(ids) < 0.11
    assert all(sampled(i, 1.0) for i in ids[:100]) and not any(sampled(i, 0.0) for i in ids[:100])
    assert [sampled(i, 0.1, key="other") for i in ids] != first  # the key reseeds the choice


@pytest.mark.parametrize("kind", BACKENDS)
async def test_feedback_right_after_the_answer_finds_its_record(kind: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    writer = CaptureWriter(make_store(kind, tmp_path, request), flush_interval_s=5.0)  # slow ticks: still queued
    await writer.start()
    writer.submit(record("just-answered"))
    assert await writer.set_feedback("just-answered", make_feedback("down", "a cap")) == "saved"
    assert await writer.set_feedback("never-seen", make_feedback("up")) == "not_found"
    await writer.close()


async def test_a_queued_record_deleted_is_never_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    writer = CaptureWriter(open_store(url), flush_interval_s=5.0)
    await writer.start()
    writer.submit(record("forget-me"))
    writer.submit(record("keep-me"))
    assert await writer.delete("forget-me") is True
    assert await writer.delete("forget-me") is False
    await writer.close()
    store = open_store(url)
    assert [r.id for r in await store.query(CaptureQuery())] == ["keep-me"]
    await store.close()


@pytest.mark.parametrize("kind", BACKENDS)
async def test_retention_purges_at_start(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = make_store(kind, tmp_path, request)
    await store.write([record("old", created=ago(days=8)), record("recent", created=ago(days=6))], {})
    writer = CaptureWriter(store, retention_days=7)
    await writer.start()
    await wait_until_async(lambda: writer.stats().purged == 1)
    assert [r.id for r in await store.query(CaptureQuery())] == ["recent"]
    await writer.close()


async def test_metrics_export_the_counts_by_reason(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    writer = CaptureWriter(open_store(f"sqlite:///{tmp_path / 'c.db'}"), queue_max=1)
    writer.submit(record("a"))
    writer.submit(record("b"))
    registry = CollectorRegistry()
    registry.register(CaptureCollector(writer))
    text = generate_latest(registry).decode()
    assert 'vqa_capture_dropped_total{reason="queue_full"} 1.0' in text
    assert "vqa_capture_queue_depth 1.0" in text and "vqa_capture_database_up 1.0" in text
    await writer.close(timeout_s=1)
