"""The shared capture store: PostgreSQL through asyncpg, so every replica writes to one database.

A small pool (connected on first use; a failed connect is retried on the next call) runs the same
statements as the SQLite store (capture/sql.py). Tables are created under an advisory lock, so
replicas starting together do not race. Pictures are written in hash order, one lock order for all
writers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from vqaserve.capture import sql
from vqaserve.capture.record import CaptureQuery, CaptureRecord, Feedback, FeedbackResult, utc_now
from vqaserve.capture.store import unavailable
from vqaserve.errors import CaptureUnavailable

_SCHEMA_LOCK = 0x76716163  # pg_advisory_xact_lock key while creating tables ("vqac")


def _q(statement: str) -> str:
    return sql.number(statement, "postgresql")


def _same(when: datetime) -> datetime:
    return when


class PostgresStore:
    def __init__(self, url: str, connect_timeout_s: float = 5.0, statement_timeout_s: float = 30.0,
                 max_connections: int = 4) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self.max_connections = max_connections
        self._pool: Any = None  # asyncpg.Pool
        self._opening: asyncio.Lock | None = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; any database or network failure becomes CaptureUnavailable."""
        import asyncpg

        try:
            pool = await self._ready()
            async with pool.acquire(timeout=self.connect_timeout_s) as con:
                yield con
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if self._pool is not None and not isinstance(exc, asyncpg.PostgresError):
                # The connection or the server went away: the next call starts on fresh connections.
                await self._pool.expire_connections()
            raise unavailable(self.url, exc, "check that PostgreSQL is up and VQA_CAPTURE_URL is right") from None

    async def _ready(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                import asyncpg

                pool = await asyncpg.create_pool(self.url, min_size=0, max_size=self.max_connections,
                                                 timeout=self.connect_timeout_s,
                                                 command_timeout=self.statement_timeout_s)
                try:
                    async with pool.acquire(timeout=self.connect_timeout_s) as con:
                        await _create(con)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    async def write(self, records: Sequence[CaptureRecord], pictures: Mapping[str, bytes]) -> None:
        now = utc_now()
        async with self._connection() as con, con.transaction():
            await con.executemany(_q(sql.INSERT_CAPTURE), [sql.capture_row(r, _same) for r in records])
            links = [(r.id, i, p.content_hash) for r in records for i, p in enumerate(r.pictures)]
            if links:
                await con.executemany(_q(sql.INSERT_LINK), links)
            for content_hash, png in sql.picture_writes(records, pictures):
                if png is None:
                    await con.execute(_q(sql.TOUCH_PICTURE), now, content_hash)
                else:
                    await con.execute(_q(sql.UPSERT_PICTURE), content_hash, png, now)

    async def missing_pictures(self, hashes: Collection[str]) -> set[str]:
        wanted = set(hashes)
        if not wanted:
            return set()
        async with self._connection() as con:
            rows = await con.fetch("SELECT hash FROM pictures WHERE hash = ANY($1::text[])", list(wanted))
        return wanted - {row[0] for row in rows}

    async def get(self, capture_id: str) -> CaptureRecord | None:
        async with self._connection() as con:
            row = await con.fetchrow(_q(sql.SELECT_ONE), capture_id)
            return (await _with_pictures(con, [row]))[0] if row else None

    async def delete(self, capture_id: str) -> bool:
        async with self._connection() as con, con.transaction():
            status = await con.execute(_q(sql.DELETE_ONE), capture_id)
            await con.execute(_q(sql.DELETE_ORPHANS), utc_now())
        return _affected(status) > 0

    async def purge(self, older_than: datetime) -> int:
        started = utc_now()
        async with self._connection() as con, con.transaction():
            status = await con.execute(_q(sql.DELETE_OLDER), older_than)
            await con.execute(_q(sql.DELETE_ORPHANS), started)
        return _affected(status)

    async def set_feedback(self, capture_id: str, feedback: Feedback) -> FeedbackResult:
        async with self._connection() as con:
            status = await con.execute(_q(sql.SET_FEEDBACK), feedback.rating, feedback.correction,
                                       feedback.comment, feedback.at, capture_id)
        return "saved" if _affected(status) else "not_found"

    async def query(self, query: CaptureQuery) -> list[CaptureRecord]:
        statement, params = sql.listing(query)
        async with self._connection() as con:
            rows = await con.fetch(_q(statement), *params)
            return await _with_pictures(con, rows)

    async def count(self, query: CaptureQuery) -> int:
        statement, params = sql.counting(query)
        async with self._connection() as con:
            return int(await con.fetchval(_q(statement), *params))

    async def picture(self, content_hash: str) -> bytes | None:
        async with self._connection() as con:
            png = await con.fetchval(_q(sql.SELECT_PICTURE), content_hash)
        return bytes(png) if png is not None else None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.connect_timeout_s)
            except (TimeoutError, OSError, Exception):  # noqa: BLE001 - a hung server: just drop the sockets
                pool.terminate()


async def _create(con: Any) -> None:
    async with con.transaction():
        await con.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        for statement in sql.create_statements("postgresql"):
            await con.execute(statement)
        found = await con.fetchval("SELECT MAX(version) FROM capture_schema")
        if found is None:
            await con.execute("INSERT INTO capture_schema (version) VALUES ($1)", sql.SCHEMA_VERSION)
        elif int(found) > sql.SCHEMA_VERSION:
            raise CaptureUnavailable(sql.newer_schema_message(int(found)))


async def _with_pictures(con: Any, rows: Sequence[Any]) -> list[CaptureRecord]:
    ids = [row[0] for row in rows]
    links: dict[str, list[str]] = {i: [] for i in ids}
    if ids:
        found = await con.fetch("SELECT capture_id, hash FROM capture_pictures WHERE capture_id = ANY($1::text[]) "
                                "ORDER BY capture_id, position", ids)
        for capture_id, content_hash in found:
            links[capture_id].append(content_hash)
    return [sql.record_from_row(tuple(row), links[row[0]]) for row in rows]


def _affected(status: str) -> int:
    """asyncpg's command tag ("DELETE 3", "UPDATE 1") -> the row count."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
