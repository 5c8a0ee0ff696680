"""Per-row streaming out of one batched Hugging Face generate().

`RowStreamer` is generate()'s streamer on the worker thread: each step it gets one new token per
row, keeps each streaming row's ids (until the RowStopper marks the row finished: a stop, its own
max_new_tokens, its client gone or its deadline passed) and hands the row's text so far to the
row's feed. `RowText` is that feed on the event loop: it holds back what a stop string might still
cut and passes only new text on to the row's sink, so a row's deltas are a prefix of its answer.
`LoopHop` carries the feeds' updates to the event loop: one wake-up for all rows of a step (and for
several steps when the loop is behind), not one per row and token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

from vqaserve.engines.base import DeltaSink
from vqaserve.engines.hf_generation import RowState, cut_at_stop
from vqaserve.types import GenerationParams

# Called from the worker thread with a row's whole text so far; hops to the event loop itself.
RowFeed = Callable[[str], None]


class LoopHop:
    """Updates from the worker thread, run on the event loop in the order they came, with one
    call_soon_threadsafe per batch of pending updates (each such call wakes the loop up)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[str], None], str]] = []
        self._scheduled = False

    def feed(self, update: Callable[[str], None]) -> RowFeed:
        def feed(text: str) -> None:
            with self._lock:
                self._pending.append((update, text))
                if self._scheduled:
                    return
                self._scheduled = True
            self._loop.call_soon_threadsafe(self._run)

        return feed

    def _run(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        for update, text in pending:
            update(text)


class RowText:
    """A streaming row's text on the event loop: sends what no stop string can take back."""

    def __init__(self, params: GenerationParams, sink: DeltaSink) -> None:
        self._stops = tuple(s for s in params.stop if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1  # a stop may span pieces
        self._sink = sink
        self.sent = 0

    def feed(self, hop: LoopHop) -> RowFeed:
        """update() as the worker thread calls it: run on the loop, in order."""
        return hop.feed(self.update)

    def update(self, text: str) -> None:
        if self._stops and cut_at_stop(text, self._stops)[1]:
            return  # the row ends on this stop string; its answer (cut) brings the rest
        safe = len(text) - self._hold
        if safe > self.sent:
            self._sink(text[self.sent:safe])
            self.sent = safe


class RowStreamer:
    """generate()'s streamer for a batch: per-row ids and text, for the rows that have a feed."""

    def __init__(self, rows: Sequence[RowState], feeds: Sequence[RowFeed | None],
                 decode: Callable[[list[int]], str]) -> None:
        self._rows, self._feeds, self._decode = rows, feeds, decode
        self._ids: list[list[int]] = [[] for _ in rows]
        self._texts = [""] * len(rows)
        # a stop token's text is left out of the answer, so out of the stream too
        self._drop = [frozenset(() if r.request.params.include_stop_str_in_output
                                else r.request.params.stop_token_ids) for r in rows]
        self._prompt = True

    def put(self, value: Any) -> None:
        if self._prompt:  # generate() first hands over the prompt ids
            self._prompt = False
            return
        tokens = value.reshape(-1).tolist()
        for i, feed in enumerate(self._feeds):
            # A finished row gets padding from here on; the stopper marks it after the step that
            # ended it, so its last real token is still taken.
            if feed is None or self._rows[i].done_at is not None:
                continue
            token = int(tokens[i])
            if token in self._drop[i]:
                continue
            self._ids[i].append(token)
            text = self._decode(self._ids[i])
            if text != self._texts[i] and not text.endswith("\ufffd"):  # not mid-character
                self._texts[i] = text
                feed(text)

    def end(self) -> None:
        """generate() is done; each row's answer carries whatever was not streamed yet."""
