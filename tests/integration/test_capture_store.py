"""The capture stores against the real databases: the same tests for SQLite and a real PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.capture_helpers import BACKENDS, ago, make_store, picture, record, store_url
from vqaserve.capture import CaptureQuery, Feedback, make_feedback, open_store
from vqaserve.capture.writer import encode_png
from vqaserve.errors import CaptureUnavailable, InvalidRequest

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    s = make_store(request.param, tmp_path, request)
    yield s
    await s.close()


async def test_a_record_comes_back_as_written(store: Any) -> None:
    red = picture((200, 10, 10))
    written = record("chatcmpl-1", answer="sunglasses", pictures=(red,), adapter="v2", adapter_fingerprint="ab12",
                     confidence=0.31, latency_ms=12.5, cache="miss", key_name="shop-web", finish_reason="length")
    await store.write([written], {red.content_hash: encode_png(red.image)})
    got = await store.get("chatcmpl-1")
    assert got is not None
    assert (got.model, got.adapter, got.adapter_fingerprint, got.answer, got.finish_reason) == \
        ("shop-toy", "v2", "ab12", "sunglasses", "length")
    assert (got.confidence, got.latency_ms, got.cache, got.key_name) == (0.31, 12.5, "miss", "shop-web")
    assert got.turns == written.turns and got.question == "What is it?"
    assert got.image_hashes == (red.content_hash,) and got.feedback is None
    assert abs((got.created - written.created).total_seconds()) < 0.001
    png = await store.picture(red.content_hash)
    assert png is not None and Image.open(io.BytesIO(png)).tobytes() == red.image.tobytes()
    assert await store.get("chatcmpl-unknown") is None


async def test_a_picture_is_stored_once_and_goes_with_its_last_record(store: Any) -> None:
    red, blue = picture((200, 10, 10)), picture((10, 10, 200))
    await store.write([record("a", pictures=(red,)), record("b", pictures=(red, blue))],
                      {red.content_hash: encode_png(red.image), blue.content_hash: encode_png(blue.image)})
    assert await store.missing_pictures([red.content_hash, blue.content_hash, "nope"]) == {"nope"}
    b = await store.get("b")
    assert b.image_hashes == (red.content_hash, blue.content_hash)  # in order
    assert await store.delete("b") is True
    assert await store.picture(blue.content_hash) is None  # no other record shows it
    assert await store.picture(red.content_hash) is not None  # "a" still does
    assert await store.delete("b") is False
    assert await store.delete("a") is True
    assert await store.picture(red.content_hash) is None


async def test_writing_an_id_again_keeps_the_first(store: Any) -> None:
    await store.write([record("same", answer="first")], {})
    await store.write([record("same", answer="second")], {})
    assert (await store.get("same")).answer == "first"


async def test_a_picture_kept_by_hash_only_has_no_bytes(store: Any) -> None:
    red = picture((200, 10, 10))
    await store.write([record("a", pictures=(red,))], {})
    assert (await store.get("a")).image_hashes == (red.content_hash,)
    assert await store.picture(red.content_hash) is None


async def test_feedback_replaces_the_previous_and_an_unknown_id_is_not_found(store: Any) -> None:
    await store.write([record("r1")], {})
    assert await store.set_feedback("r1", make_feedback("down", "sunglasses", "wrong category")) == "saved"
    assert await store.set_feedback("r1", make_feedback("up")) == "saved"
    got = (await store.get("r1")).feedback
    assert (got.rating, got.correction, got.comment) == ("up", None, None)
    assert await store.set_feedback("nobody", make_feedback("up")) == "not_found"


def test_feedback_fields_are_checked() -> None:
    with pytest.raises(InvalidRequest, match="rating must be 'up' or 'down'"):
        make_feedback("meh")
    with pytest.raises(InvalidRequest, match="correction is longer than 2000"):
        make_feedback("down", "x" * 2001)
    assert make_feedback("down", "  ", " fine ").correction is None


async def test_queries_filter_and_list_newest_first(store: Any) -> None:
    rows = [
        record("old", created=ago(days=3), confidence=0.9),
        record("low", created=ago(days=2), confidence=0.2),
        record("down", created=ago(days=1), confidence=0.8, feedback=Feedback("down", "a cap", at=ago(hours=1))),
        record("adapted", created=ago(hours=5), confidence=0.4, adapter="v2"),
        record("other-model", created=ago(hours=4), model="big", confidence=None),
        record("up", created=ago(hours=3), confidence=0.6, feedback=Feedback("up", at=ago(hours=2))),
    ]
    await store.write(rows, {})

    async def ids(**filters: Any) -> list[str]:
        return [r.id for r in await store.query(CaptureQuery(**filters))]

    assert await ids() == ["up", "other-model", "adapted", "down", "low", "old"]
    assert await ids(confidence_below=0.5) == ["adapted", "low"]  # unknown confidence is not low
    assert await ids(rating="down") == ["down"]
    assert await ids(confidence_below=0.5, rating="down", either=True) == ["adapted", "down", "low"]
    assert await ids(confidence_below=0.5, rating="down") == []
    assert await ids(rated=True) == ["up", "down"]
    assert await ids(model="big") == ["other-model"]
    assert await ids(adapter="v2") == ["adapted"]
    assert await ids(since=ago(days=2, hours=1), until=ago(hours=4, minutes=30)) == ["adapted", "down", "low"]
    assert await ids(limit=2, offset=1) == ["other-model", "adapted"]
    assert await store.count(CaptureQuery(confidence_below=0.5)) == 2
    assert await store.count(CaptureQuery(limit=1)) == 6
    down = (await store.query(CaptureQuery(rating="down")))[0]
    assert down.feedback is not None and down.feedback.correction == "a cap"


async def test_purge_deletes_old_records_and_their_unused_pictures(store: Any) -> None:
    old_pic, shared, new_pic = picture((1, 2, 3)), picture((4, 5, 6)), picture((7, 8, 9))
    pngs = {p.content_hash: encode_png(p.image) for p in (old_pic, shared, new_pic)}
    await store.write([record("old", created=ago(days=40), pictures=(old_pic, shared)),
                       record("new", created=ago(days=1), pictures=(shared, new_pic))], pngs)
    assert await store.purge(ago(days=30)) == 1
    assert await store.get("old") is None and await store.get("new") is not None
    assert await store.picture(old_pic.content_hash) is None
    assert await store.picture(shared.content_hash) is not None
    assert await store.purge(ago(days=30)) == 0


async def test_a_newer_schema_is_refused(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    for kind in BACKENDS:
        url = store_url(kind, tmp_path, request)
        first = open_store(url)
        await first.write([record("x")], {})
        await first.close()
        await _set_schema_version(url, 99)
        second = open_store(url)
        with pytest.raises(CaptureUnavailable, match="schema version 99, newer than this vqaserve knows"):
            await second.get("x")
        await second.close()


async def _set_schema_version(url: str, version: int) -> None:
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE capture_schema SET version = ?", (version,))
        return
    import asyncpg

    con = await asyncpg.connect(url)
    await con.execute("UPDATE capture_schema SET version = $1", version)
    await con.close()


async def test_an_unreachable_postgres_is_capture_unavailable() -> None:
    from tests.conftest import free_port

    store = open_store(f"postgresql://vqa:secret@127.0.0.1:{free_port()}/none")
    with pytest.raises(CaptureUnavailable) as err:
        await store.count(CaptureQuery())
    assert "check that PostgreSQL is up" in err.value.message and "secret" not in err.value.message
    await store.close()


async def test_an_unwritable_sqlite_path_is_capture_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = open_store(f"sqlite:///{blocker / 'capture.db'}")
    with pytest.raises(CaptureUnavailable, match="check the path"):
        await store.count(CaptureQuery())
    await store.close()
