"""The embedded capture store: one SQLite file in WAL mode, driven by stdlib sqlite3 in one thread.

Every statement runs on a single worker thread that owns the connection, so the event loop never
waits on the disk and statements never interleave. WAL lets `vqa capture list` (another process)
read while the server writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from vqaserve.capture import sql
from vqaserve.capture.record import CaptureQuery, CaptureRecord, Feedback, FeedbackResult, utc_now
from vqaserve.capture.store import unavailable
from vqaserve.errors import CaptureUnavailable

T = TypeVar("T")


def _time(when: datetime) -> str:
    """Fixed-width ISO text in UTC, so text order is time order."""
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _param(value: Any) -> Any:
    return _time(value) if isinstance(value, datetime) else value


def _q(statement: str) -> str:
    return sql.number(statement, "sqlite")


class SqliteStore:
    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqa-capture-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._connection())
        except (sqlite3.Error, OSError) as exc:
            raise unavailable(self.url, exc, "check the path, its permissions and the free disk space") from None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA foreign_keys=ON")
                _create(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    async def write(self, records: Sequence[CaptureRecord], pictures: Mapping[str, bytes]) -> None:
        def work(db: sqlite3.Connection) -> None:
            now = _time(utc_now())
            with _transaction(db):
                for r in records:
                    db.execute(_q(sql.INSERT_CAPTURE), sql.capture_row(r, _time))
                    for position, picture in enumerate(r.pictures):
                        db.execute(_q(sql.INSERT_LINK), (r.id, position, picture.content_hash))
                for content_hash, png in sql.picture_writes(records, pictures):
                    if png is None:
                        db.execute(_q(sql.TOUCH_PICTURE), (now, content_hash))
                    else:
                        db.execute(_q(sql.UPSERT_PICTURE), (content_hash, png, now))

        await self._run(work)

    async def missing_pictures(self, hashes: Collection[str]) -> set[str]:
        wanted = list(dict.fromkeys(hashes))

        def work(db: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), 500):  # SQLite's limit on parameters per statement
                chunk = wanted[start:start + 500]
                rows = db.execute(f"SELECT hash FROM pictures WHERE hash IN ({', '.join('?' * len(chunk))})", chunk)
                found.update(row[0] for row in rows)
            return set(wanted) - found

        return await self._run(work) if wanted else set()

    async def get(self, capture_id: str) -> CaptureRecord | None:
        def work(db: sqlite3.Connection) -> CaptureRecord | None:
            row = db.execute(_q(sql.SELECT_ONE), (capture_id,)).fetchone()
            return _with_pictures(db, [row])[0] if row else None

        return await self._run(work)

    async def delete(self, capture_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                gone = db.execute(_q(sql.DELETE_ONE), (capture_id,)).rowcount
                db.execute(_q(sql.DELETE_ORPHANS), (_time(utc_now()),))
            return gone > 0

        return await self._run(work)

    async def purge(self, older_than: datetime) -> int:
        def work(db: sqlite3.Connection) -> int:
            started = _time(utc_now())
            with _transaction(db):
                gone = db.execute(_q(sql.DELETE_OLDER), (_time(older_than),)).rowcount
                db.execute(_q(sql.DELETE_ORPHANS), (started,))
            return int(gone)

        return await self._run(work)

    async def set_feedback(self, capture_id: str, feedback: Feedback) -> FeedbackResult:
        def work(db: sqlite3.Connection) -> FeedbackResult:
            changed = db.execute(_q(sql.SET_FEEDBACK), (feedback.rating, feedback.correction, feedback.comment,
                                                        _time(feedback.at), capture_id)).rowcount
            return "saved" if changed else "not_found"

        return await self._run(work)

    async def query(self, query: CaptureQuery) -> list[CaptureRecord]:
        statement, params = sql.listing(query)

        def work(db: sqlite3.Connection) -> list[CaptureRecord]:
            rows = db.execute(_q(statement), [_param(p) for p in params]).fetchall()
            return _with_pictures(db, rows)

        return await self._run(work)

    async def count(self, query: CaptureQuery) -> int:
        statement, params = sql.counting(query)

        def work(db: sqlite3.Connection) -> int:
            return int(db.execute(_q(statement), [_param(p) for p in params]).fetchone()[0])

        return await self._run(work)

    async def picture(self, content_hash: str) -> bytes | None:
        def work(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(_q(sql.SELECT_PICTURE), (content_hash,)).fetchone()
            return bytes(row[0]) if row else None

        return await self._run(work)

    async def close(self) -> None:
        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, work)
        self._pool.shutdown(wait=False)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _create(db: sqlite3.Connection) -> None:
    with _transaction(db):
        for statement in sql.create_statements("sqlite"):
            db.execute(statement)
        row = db.execute("SELECT MAX(version) FROM capture_schema").fetchone()
        if row[0] is None:
            db.execute("INSERT INTO capture_schema (version) VALUES (?)", (sql.SCHEMA_VERSION,))
        elif int(row[0]) > sql.SCHEMA_VERSION:
            raise CaptureUnavailable(sql.newer_schema_message(int(row[0])))


def _with_pictures(db: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[CaptureRecord]:
    ids = [row[0] for row in rows]
    links: dict[str, list[str]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        statement = sql.SELECT_LINKS.format(ids=", ".join("?" * len(chunk)))
        for capture_id, content_hash in db.execute(statement, chunk):
            links[capture_id].append(content_hash)
    return [sql.record_from_row(row, links[row[0]]) for row in rows]
