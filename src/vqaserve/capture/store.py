"""The capture database: one typed contract (`CaptureStore`), two implementations behind a URL.

    sqlite:///PATH          (embedded, the default kind; sqlite:////abs/path.db is an absolute path)
    postgresql://USER:PASSWORD@HOST:PORT/DB   (shared by replicas; postgres:// works too)

`open_store(url)` picks the class. Stores create their tables on first use (a schema version
table says which layout a database has) and raise `CaptureUnavailable` when the database cannot be
reached. Only `CaptureWriter` writes on the request path's behalf; the CLI, export and the review
routes call the store directly.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol
from urllib.parse import urlsplit

from vqaserve.capture.record import CaptureQuery, CaptureRecord, Feedback, FeedbackResult
from vqaserve.errors import CaptureUnavailable, InvalidRequest

URL_HELP = ("use sqlite:///PATH (e.g. sqlite:///var/lib/vqa/capture.db) or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB")


class CaptureStore(Protocol):
    """Every method may raise `CaptureUnavailable` (database down, statement refused)."""

    url: str  # as given, for messages use `redact(url)`

    async def write(self, records: Sequence[CaptureRecord], pictures: Mapping[str, bytes]) -> None:
        """Store records (an id already stored is left as it is) and the PNG bytes of new pictures
        by content hash; a record's pictures without bytes keep their hash only."""

    async def missing_pictures(self, hashes: Collection[str]) -> set[str]:
        """Which of these content hashes have no stored picture yet (the writer encodes only those)."""

    async def get(self, capture_id: str) -> CaptureRecord | None: ...

    async def delete(self, capture_id: str) -> bool:
        """Delete one record and its feedback; its pictures go when no other record uses them.
        False when there was no such record."""

    async def purge(self, older_than: datetime) -> int:
        """Delete records created before `older_than` (and pictures left unused); returns how many."""

    async def set_feedback(self, capture_id: str, feedback: Feedback) -> FeedbackResult:
        """Rate a record; a second feedback replaces the first whole."""

    async def query(self, query: CaptureQuery) -> list[CaptureRecord]:
        """Records matching the filters, newest first, `query.limit` from `query.offset`."""

    async def count(self, query: CaptureQuery) -> int:
        """How many records match the filters (limit and offset ignored)."""

    async def picture(self, content_hash: str) -> bytes | None:
        """The PNG bytes of a stored picture; None when it was never stored or has been deleted."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class CaptureURL:
    kind: Literal["sqlite", "postgresql"]
    url: str
    path: str = ""  # sqlite only


def parse_capture_url(url: str, name: str = "VQA_CAPTURE_URL") -> CaptureURL:
    """Check a capture URL; the error names `name` (the variable or flag) and the fix."""
    url = url.strip()
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:" or path.endswith("/"):
            raise ValueError(f"{name}: {url!r} names no database file; {URL_HELP}")
        return CaptureURL("sqlite", url, path)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"{name}: {redact(url)!r} is not a valid URL; {URL_HELP}") from None
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError(f"{name}: {redact(url)!r} names no host; {URL_HELP}")
        return CaptureURL("postgresql", url)
    shown = redact(url) if "://" in url else url
    raise ValueError(f"{name}: {shown!r} is not a capture database; {URL_HELP}")


def redact(url: str) -> str:
    """The URL without its password, for messages and export.json."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def unavailable(url: str, exc: BaseException, fix: str) -> CaptureUnavailable:
    """The one wording of a database failure: which database (no password), what happened, the fix."""
    return CaptureUnavailable(f"capture database {redact(url)}: {type(exc).__name__}: "
                              f"{str(exc) or 'no answer in time'}; {fix}")


def open_store(url: str, name: str = "VQA_CAPTURE_URL") -> CaptureStore:
    """The store for a capture URL (connects lazily, on first use)."""
    try:
        parsed = parse_capture_url(url, name)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if parsed.kind == "sqlite":
        from vqaserve.capture.sqlite import SqliteStore

        return SqliteStore(parsed.url, parsed.path)
    from vqaserve.capture.postgres import PostgresStore

    return PostgresStore(parsed.url)
