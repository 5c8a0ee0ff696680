"""Rated captures -> training data in the format `vqa train` and `vqa eval` read (train/data.py).

What becomes a line (`{"image", "question", "answer", "type", "lang", "id"}`, image relative to the
file), and what does not:
- a correction is the answer (type `corrected`), whatever the rating; a thumbs-up answer is kept as
  it was (type `confirmed`); a thumbs-down without a correction is dropped; unrated answers are
  left out (counted in export.json).
- only one picture and one question (no follow-ups) per record: the single-question sample that
  serving sees; others are counted as skipped.
- one line per (picture, question): the newest rating wins.
- the held-out slice is split by picture (shuffled with the seed), so no picture is in both files.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from vqaserve.capture.record import CaptureQuery, CaptureRecord, utc_now
from vqaserve.capture.store import CaptureStore, redact
from vqaserve.errors import InvalidRequest

PAGE = 500
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_SAFE_NAME = re.compile(r"^[0-9A-Za-z_-]{1,128}$")


@dataclass
class Line:
    record: CaptureRecord
    answer: str
    type: str  # "corrected" | "confirmed"

    @property
    def picture(self) -> str:
        return self.record.image_hashes[0]


@dataclass
class ExportResult:
    out: Path
    train: int
    holdout: int
    info: dict[str, Any] = field(default_factory=dict)  # what export.json says


def lang_of(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def choose(record: CaptureRecord, dropped: Counter[str]) -> Line | None:
    """The line a rated record gives, or None (counted in `dropped` by reason)."""
    users = [t for t in record.turns if t.get("role") == "user"]
    if len(record.pictures) != 1:
        dropped["no_picture" if not record.pictures else "several_pictures"] += 1
        return None
    if len(users) != 1 or len(record.turns) != 1 or not record.question.strip():
        dropped["follow_up_or_several_questions"] += 1
        return None
    feedback = record.feedback
    assert feedback is not None  # the query asked for rated records only
    if feedback.correction:
        return Line(record, feedback.correction, "corrected")
    if feedback.rating == "up":
        return Line(record, record.answer.strip(), "confirmed")
    dropped["down_without_correction"] += 1
    return None


def newest_per_question(lines: list[Line], dropped: Counter[str]) -> list[Line]:
    """One line per (picture, question), the most recently rated; oldest first in the output."""
    lines = sorted(lines, key=lambda ln: (ln.record.feedback.at if ln.record.feedback else ln.record.created),
                   reverse=True)
    kept: dict[tuple[str, str], Line] = {}
    for line in lines:
        key = (line.picture, line.record.question.strip())
        if key in kept:
            dropped["duplicate_picture_and_question"] += 1
        else:
            kept[key] = line
    return sorted(kept.values(), key=lambda ln: (ln.record.created, ln.record.id))


def split_pictures(pictures: list[str], holdout: float, seed: int) -> set[str]:
    """The pictures held out: round(n * holdout), at least one each side when there are two or more."""
    ordered = sorted(set(pictures))
    if holdout <= 0 or len(ordered) < 2:
        return set()
    n = min(len(ordered) - 1, max(1, round(len(ordered) * holdout)))
    random.Random(f"holdout:{seed}").shuffle(ordered)
    return set(ordered[:n])


async def export(store: CaptureStore, out: str | Path, *, since: datetime | None = None,
                 until: datetime | None = None, holdout: float = 0.2, seed: int = 0,
                 command: str = "") -> ExportResult:
    if not 0.0 <= holdout < 1.0:
        raise InvalidRequest("--holdout must be a fraction from 0 (none) to below 1, e.g. --holdout 0.2")
    out = Path(out)
    if (out / "data.jsonl").exists():
        raise InvalidRequest(f"--out {out} already holds an export (data.jsonl); choose a new directory")
    until = until or utc_now()  # records captured while the export runs would shift its pages
    everything = await store.count(CaptureQuery(since=since, until=until))
    rated = await _all_rated(store, since, until)
    dropped: Counter[str] = Counter()
    chosen = [line for r in rated if (line := choose(r, dropped)) is not None]
    lines = newest_per_question(chosen, dropped)
    images: dict[str, bytes] = {}
    for picture in sorted({ln.picture for ln in lines}):
        png = await store.picture(picture)
        if png is not None:
            images[picture] = png
    missing = [ln for ln in lines if ln.picture not in images]
    if missing:
        dropped["picture_not_stored"] += len(missing)
    lines = [ln for ln in lines if ln.picture in images]
    if not lines:
        raise InvalidRequest(f"nothing to export: {len(rated)} rated and {everything - len(rated)} unrated answer(s) "
                             f"in the range, none usable ({_reasons(dropped) or 'no ratings'}); rate answers "
                             "first (the review page, POST /v1/feedback or vqa capture rate)")
    held = split_pictures([ln.picture for ln in lines], holdout, seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = {h: f"images/{_file_name(h)}.png" for h in images}
    for picture, png in images.items():
        (out / names[picture]).write_bytes(png)
    train = [ln for ln in lines if ln.picture not in held]
    kept_out = [ln for ln in lines if ln.picture in held]
    _write_jsonl(out / "data.jsonl", train, names)
    if kept_out:
        _write_jsonl(out / "holdout.jsonl", kept_out, names)
    info = {
        "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": redact(store.url), "since": _iso(since), "until": _iso(until), "holdout": holdout,
        "seed": seed,
        "counts": {"captured_in_range": everything, "rated": len(rated),
                   "unrated_left_out": everything - len(rated),
                   "kept": dict(Counter(ln.type for ln in lines)), "dropped": dict(sorted(dropped.items()))},
        "files": {"data.jsonl": {"lines": len(train), "pictures": len({ln.picture for ln in train})},
                  "holdout.jsonl": {"lines": len(kept_out), "pictures": len(held)}},
        "time_range": {"first": _iso(min(ln.record.created for ln in lines)),
                       "last": _iso(max(ln.record.created for ln in lines))},
        "versions": _versions(),
    }
    (out / "export.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ExportResult(out, len(train), len(kept_out), info)


async def _all_rated(store: CaptureStore, since: datetime | None, until: datetime | None) -> list[CaptureRecord]:
    # Paged by creation time (newest first) so a long history is read in bounded steps.
    rated: dict[str, CaptureRecord] = {}
    offset = 0
    while True:
        page = await store.query(CaptureQuery(rated=True, since=since, until=until, limit=PAGE, offset=offset))
        rated.update((r.id, r) for r in page)
        offset += len(page)
        if len(page) < PAGE:
            return list(rated.values())


def _write_jsonl(path: Path, lines: list[Line], names: dict[str, str]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for ln in lines:
            question = ln.record.question.strip()
            fh.write(json.dumps({"image": names[ln.picture], "question": question, "answer": ln.answer,
                                 "type": ln.type, "lang": lang_of(question), "id": ln.record.id},
                                ensure_ascii=False) + "\n")


def _file_name(content_hash: str) -> str:
    if _SAFE_NAME.match(content_hash):
        return content_hash
    import hashlib

    return hashlib.sha256(content_hash.encode()).hexdigest()[:32]


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


def _reasons(dropped: Counter[str]) -> str:
    return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items()) if n)


def _versions() -> dict[str, str]:
    from vqaserve import __version__

    return {"vqaserve": __version__}
