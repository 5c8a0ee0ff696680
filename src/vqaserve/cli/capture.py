"""`vqa capture`: list, rate, delete and purge captured answers (the learning loop's terminal side).

Every action takes `--capture URL` (default: VQA_CAPTURE_URL). Dates are UTC: `2026-12-01` or
`2026-12-01T14:30`; a bare `--until` date includes that whole day.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from vqaserve.errors import InvalidRequest, NotFound

T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("capture", help="list, rate, delete or purge captured answers (VQA_CAPTURE_URL)",
                       description="Captured answers (docs/learning-loop.md). Examples:\n"
                                   "  vqa capture list --flagged --since 2026-12-01\n"
                                   "  vqa capture rate chatcmpl-1a2b down --correction sunglasses\n"
                                   "  vqa capture purge --older-than 30",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="capture_command", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="captured answers, newest first")
    _capture_arg(ls)
    which = ls.add_mutually_exclusive_group()
    which.add_argument("--flagged", action="store_true", help="confidence under VQA_REVIEW_BELOW")
    which.add_argument("--down", action="store_true", help="rated thumbs-down")
    which.add_argument("--low-confidence", type=float, metavar="X", help="confidence under X")
    which.add_argument("--review", action="store_true", help="flagged or thumbs-down (the review list)")
    ls.add_argument("--model", help="answered by this model")
    ls.add_argument("--adapter", help="answered with this adapter")
    ls.add_argument("--since", type=parse_time, metavar="DATE", help="captured at or after DATE (UTC)")
    ls.add_argument("--until", type=parse_until, metavar="DATE", help="captured before DATE's end (UTC)")
    ls.add_argument("--limit", type=int, default=50, help="at most N answers (default 50)")
    ls.add_argument("--offset", type=int, default=0, help="skip the first N")
    ls.add_argument("--json", action="store_true", help="print a JSON array (for scripts)")
    ls.set_defaults(func=run_list)

    rate = actions.add_parser("rate", help="rate a captured answer, optionally with the right answer")
    _capture_arg(rate)
    rate.add_argument("id", help="the answer's id (chatcmpl-... or /v1/vqa's request id)")
    rate.add_argument("rating", choices=["up", "down"])
    rate.add_argument("--correction", help="the right answer")
    rate.add_argument("--comment")
    rate.set_defaults(func=run_rate)

    delete = actions.add_parser("delete", help="delete one captured answer (and its picture if unused)")
    _capture_arg(delete)
    delete.add_argument("id", help="the answer's id")
    delete.set_defaults(func=run_delete)

    purge = actions.add_parser("purge", help="delete captured answers older than DAYS days")
    _capture_arg(purge)
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    purge.set_defaults(func=run_purge)


def _capture_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capture", metavar="URL", help="sqlite:///PATH or postgresql://... (default: VQA_CAPTURE_URL)")


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; write e.g. 2026-12-01 or 2026-12-01T14:30") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def parse_until(text: str) -> datetime:
    when = parse_time(text)
    return when + timedelta(days=1) if len(text.strip()) == 10 else when  # a bare date: the whole day


def capture_url(given: str | None) -> str:
    """--capture, else VQA_CAPTURE_URL; one clear error without either."""
    if given:
        return given
    url = capture_settings().url
    if not url:
        raise InvalidRequest("no capture database: pass --capture URL (sqlite:///PATH or postgresql://...) "
                             "or set VQA_CAPTURE_URL")
    return url


def capture_settings() -> Any:
    """settings.capture; a bad VQA_* variable is the user's input here: exit 2, as `vqa serve` does."""
    from vqaserve.errors import ConfigError
    from vqaserve.settings import load_settings

    try:
        return load_settings().capture
    except ConfigError as exc:
        raise InvalidRequest(exc.message) from None


def with_store(url: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(store)` against the capture database, closing it afterwards."""
    from vqaserve.capture.store import open_store

    store = open_store(capture_url(url), "--capture" if url else "VQA_CAPTURE_URL")

    async def run() -> T:
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def run_list(args: argparse.Namespace) -> int:
    from vqaserve.capture.record import CaptureQuery

    below = args.low_confidence
    if args.flagged or args.review:
        below = capture_settings().review_below
    if args.limit < 1 or args.offset < 0:
        raise InvalidRequest("--limit must be at least 1 and --offset at least 0")
    query = CaptureQuery(confidence_below=below, rating="down" if args.down or args.review else None,
                         either=args.review, model=args.model, adapter=args.adapter, since=args.since,
                         until=args.until, limit=args.limit, offset=args.offset)

    async def work(store: Any) -> tuple[list[Any], int]:
        return await store.query(query), await store.count(query)

    records, total = with_store(args.capture, work)
    if args.json:
        print(json.dumps([as_json(r) for r in records], ensure_ascii=False, indent=2))
        return 0
    if not records:
        print("no captured answers match", file=sys.stderr)
        return 0
    print(table(records))
    print(f"{len(records)} of {total} shown (newest first)", file=sys.stderr)
    return 0


def as_json(record: Any) -> dict[str, Any]:
    fb = record.feedback
    return {"id": record.id, "created": record.created.isoformat(), "model": record.model,
            "adapter": record.adapter, "adapter_fingerprint": record.adapter_fingerprint,
            "question": record.question, "turns": list(record.turns), "answer": record.answer,
            "finish_reason": record.finish_reason, "confidence": record.confidence,
            "latency_ms": record.latency_ms, "cache": record.cache, "key_name": record.key_name,
            "images": list(record.image_hashes),
            "feedback": None if fb is None else {"rating": fb.rating, "correction": fb.correction,
                                                 "comment": fb.comment, "at": fb.at.isoformat()}}


def _cells(text: str) -> int:
    """Terminal columns: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    if _cells(text) <= width:
        return text
    while _cells(text) > width - 1:
        text = text[:-1]
    return text + "…"


def table(records: list[Any]) -> str:
    """A readable table: one answer a line, the id in full (for `delete` and `rate`)."""
    rows = [("captured (UTC)", "id", "model", "conf", "rated", "question", "answer", "correction")]
    for r in records:
        fb = r.feedback
        rows.append((r.created.strftime("%Y-%m-%d %H:%M"), r.id, r.model + (f"+{r.adapter}" if r.adapter else ""),
                     "-" if r.confidence is None else f"{r.confidence:.2f}", fb.rating if fb else "-",
                     _cut(r.question, 40), _cut(r.answer, 28), _cut(fb.correction or "", 24) if fb else ""))
    widths = [max(_cells(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell + " " * (w - _cells(cell)) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def run_rate(args: argparse.Namespace) -> int:
    from vqaserve.capture.record import make_feedback

    feedback = make_feedback(args.rating, args.correction, args.comment)
    result = with_store(args.capture, lambda store: store.set_feedback(args.id, feedback))
    if result == "not_found":
        raise NotFound(f"no captured answer {args.id!r}; `vqa capture list` shows the ids", code="capture_not_found")
    print(f"rated {args.id} {args.rating}" + (f" (correction: {feedback.correction})" if feedback.correction else ""))
    return 0


def run_delete(args: argparse.Namespace) -> int:
    if not with_store(args.capture, lambda store: store.delete(args.id)):
        raise NotFound(f"no captured answer {args.id!r}; `vqa capture list` shows the ids", code="capture_not_found")
    print(f"deleted {args.id}")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    from vqaserve.capture.record import utc_now

    if not args.older_than >= 0:
        raise InvalidRequest("--older-than must be a number of days >= 0")
    before = utc_now() - timedelta(days=args.older_than)
    gone = with_store(args.capture, lambda store: store.purge(before))
    print(f"deleted {gone} captured answer(s) from before {before.strftime('%Y-%m-%d %H:%M')} UTC "
          "(and the pictures no other answer uses)")
    return 0
