"""The capture schema and the statements both stores run, written once with `{p}` placeholders.

SQLite and PostgreSQL get the same tables and columns; only the column types differ (`_TYPES`) and
the placeholder (`?` or `$n`). A database records its layout in `capture_schema`; a store refuses a
database whose version is newer than it knows.

    captures          one row per answered request, feedback in the same row (one rating per answer)
    capture_pictures  (capture_id, position) -> content hash: a record's pictures in order
    pictures          content hash -> PNG bytes, stored once however many records show the picture
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from vqaserve.capture.record import CapturedPicture, CaptureQuery, CaptureRecord, Feedback

SCHEMA_VERSION = 1

_TYPES = {
    "sqlite": {"time": "TEXT", "json": "TEXT", "float": "REAL", "bytes": "BLOB"},
    "postgresql": {"time": "TIMESTAMPTZ", "json": "JSONB", "float": "DOUBLE PRECISION", "bytes": "BYTEA"},
}

_TABLES = """
CREATE TABLE IF NOT EXISTS capture_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS captures (
    id TEXT PRIMARY KEY,
    created {time} NOT NULL,
    model TEXT NOT NULL,
    adapter TEXT,
    adapter_fingerprint TEXT NOT NULL DEFAULT '',
    turns {json} NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    confidence {float},
    latency_ms {float} NOT NULL,
    cache TEXT NOT NULL,
    key_name TEXT,
    rating TEXT,
    correction TEXT,
    comment TEXT,
    rated_at {time}
);
CREATE INDEX IF NOT EXISTS captures_created ON captures (created);
CREATE INDEX IF NOT EXISTS captures_rating ON captures (rating, created);
CREATE INDEX IF NOT EXISTS captures_confidence ON captures (confidence);
CREATE TABLE IF NOT EXISTS capture_pictures (
    capture_id TEXT NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (capture_id, position)
);
CREATE INDEX IF NOT EXISTS capture_pictures_hash ON capture_pictures (hash);
CREATE TABLE IF NOT EXISTS pictures (
    hash TEXT PRIMARY KEY,
    png {bytes} NOT NULL,
    last_used {time} NOT NULL
);
"""


def create_statements(dialect: str) -> list[str]:
    return [s.strip() for s in _TABLES.format(**_TYPES[dialect]).split(";") if s.strip()]


def newer_schema_message(found: int) -> str:
    return (f"the capture database has schema version {found}, newer than this vqaserve knows "
            f"({SCHEMA_VERSION}); upgrade vqaserve or point VQA_CAPTURE_URL at another database")


COLUMNS = ("id, created, model, adapter, adapter_fingerprint, turns, question, answer, finish_reason, "
           "confidence, latency_ms, cache, key_name, rating, correction, comment, rated_at")

INSERT_CAPTURE = (f"INSERT INTO captures ({COLUMNS}) VALUES ({', '.join(['{p}'] * 17)}) "
                  "ON CONFLICT (id) DO NOTHING")
INSERT_LINK = "INSERT INTO capture_pictures (capture_id, position, hash) VALUES ({p}, {p}, {p}) ON CONFLICT DO NOTHING"
# Touching last_used makes a concurrent purge skip a picture a new record is about to use (it deletes
# only pictures unused since it started: see purge_orphans).
UPSERT_PICTURE = ("INSERT INTO pictures (hash, png, last_used) VALUES ({p}, {p}, {p}) "
                  "ON CONFLICT (hash) DO UPDATE SET last_used = excluded.last_used")
TOUCH_PICTURE = "UPDATE pictures SET last_used = {p} WHERE hash = {p}"
SELECT_ONE = f"SELECT {COLUMNS} FROM captures WHERE id = {{p}}"
SELECT_LINKS = "SELECT capture_id, hash FROM capture_pictures WHERE capture_id IN ({ids}) ORDER BY capture_id, position"
SELECT_PICTURE = "SELECT png FROM pictures WHERE hash = {p}"
SET_FEEDBACK = "UPDATE captures SET rating = {p}, correction = {p}, comment = {p}, rated_at = {p} WHERE id = {p}"
DELETE_ONE = "DELETE FROM captures WHERE id = {p}"
DELETE_OLDER = "DELETE FROM captures WHERE created < {p}"
DELETE_ORPHANS = ("DELETE FROM pictures WHERE last_used < {p} AND NOT EXISTS "
                  "(SELECT 1 FROM capture_pictures l WHERE l.hash = pictures.hash)")


def picture_writes(records: Sequence[CaptureRecord], pictures: Mapping[str, bytes]) -> list[tuple[str, bytes | None]]:
    """Each picture a batch uses, once, in hash order (so concurrent writers lock rows in one order):
    (hash, PNG bytes) to store a new one, (hash, None) to touch one already stored (or kept by hash only)."""
    used = {p.content_hash for r in records for p in r.pictures} | set(pictures)
    return [(h, pictures.get(h)) for h in sorted(used)]


def number(sql: str, style: str) -> str:
    """`{p}` -> `?` (sqlite) or `$1, $2, ...` (postgresql); `{{`/`}}` are never used in these statements."""
    if style == "sqlite":
        return sql.replace("{p}", "?")
    pieces = sql.split("{p}")
    return "".join(piece + (f"${i + 1}" if i < len(pieces) - 1 else "") for i, piece in enumerate(pieces))


def capture_row(r: CaptureRecord, time: Callable[[datetime], Any]) -> tuple[Any, ...]:
    fb = r.feedback
    return (r.id, time(r.created), r.model, r.adapter, r.adapter_fingerprint,
            json.dumps(list(r.turns), ensure_ascii=False), r.question, r.answer, r.finish_reason,
            r.confidence, float(r.latency_ms), r.cache, r.key_name,
            fb.rating if fb else None, fb.correction if fb else None, fb.comment if fb else None,
            time(fb.at) if fb else None)


def record_from_row(row: Sequence[Any], hashes: Sequence[str]) -> CaptureRecord:
    """A stored row (COLUMNS order) and its pictures' hashes -> a record (pictures by hash only)."""
    (cid, created, model, adapter, fingerprint, turns, _question, answer, finish, confidence, latency,
     cache, key_name, rating, correction, comment, rated_at) = row
    feedback = (Feedback(rating=rating, correction=correction, comment=comment, at=as_time(rated_at))
                if rating else None)
    return CaptureRecord(id=cid, created=as_time(created), model=model, adapter=adapter,
                         adapter_fingerprint=fingerprint, turns=tuple(json.loads(turns)), answer=answer,
                         finish_reason=finish, confidence=confidence, latency_ms=latency, cache=cache,
                         key_name=key_name, pictures=tuple(CapturedPicture(h) for h in hashes),
                         feedback=feedback)


def as_time(value: Any) -> datetime:
    """A stored time (ISO text in SQLite, a datetime from PostgreSQL) as an aware UTC datetime."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def where(query: CaptureQuery) -> tuple[str, list[Any]]:
    """The WHERE clause of a listing (with `{p}` placeholders) and its parameters (datetimes as given)."""
    clauses: list[str] = []
    params: list[Any] = []
    flags: list[str] = []
    if query.confidence_below is not None:
        flags.append("(confidence IS NOT NULL AND confidence < {p})")
        params.append(query.confidence_below)
    if query.rating is not None:
        flags.append("rating = {p}")
        params.append(query.rating)
    if flags:
        clauses.append("(" + (" OR " if query.either else " AND ").join(flags) + ")")
    if query.rated:
        clauses.append("rating IS NOT NULL")
    for column, value in (("model", query.model), ("adapter", query.adapter)):
        if value is not None:
            clauses.append(f"{column} = {{p}}")
            params.append(value)
    if query.since is not None:
        clauses.append("created >= {p}")
        params.append(query.since)
    if query.until is not None:
        clauses.append("created < {p}")
        params.append(query.until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def listing(query: CaptureQuery) -> tuple[str, list[Any]]:
    clause, params = where(query)
    sql = f"SELECT {COLUMNS} FROM captures{clause} ORDER BY created DESC, id DESC LIMIT {{p}} OFFSET {{p}}"
    return sql, [*params, query.limit, query.offset]


def counting(query: CaptureQuery) -> tuple[str, list[Any]]:
    clause, params = where(query)
    return f"SELECT COUNT(*) FROM captures{clause}", params
