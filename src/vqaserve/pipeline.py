"""THE request path. Only this module knows the order of the stages:

    question -> images (fetch, decode, validate, fit, hash) -> safety_in (image check, prompt guard)
             -> cache lookup -> batcher (admit or 429) -> engine -> safety_out (blocklist)
             -> cache write (complete, allowed, deterministic answers only) -> Answer

Routes, the CLI, `vqa eval` and the web page all call `Pipeline.answer` / `Pipeline.open_stream`.
Each stage is a component passed in; a missing component means that stage is skipped ("bypass").
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from vqaserve.cache.coalesce import Coalescer
from vqaserve.engines.base import Engine
from vqaserve.errors import DeadlineExceeded, InvalidRequest, NotFound, VQAError
from vqaserve.image_loading import PictureLoader
from vqaserve.settings import Settings
from vqaserve.types import (
    Answer,
    CacheStatus,
    EngineRequest,
    EngineResult,
    NormalizedImage,
    Question,
    StreamDelta,
    Usage,
)


# --- the seams (implemented in safety.py, cache.py, batching.py, fetch.py, metrics.py) -------------
class ImageChecker(Protocol):
    def check(self, image: NormalizedImage) -> None:
        """Raise BlockedInput when the image must be refused."""


class OutputFilter(Protocol):
    version: str

    def is_blocked(self, text: str) -> bool: ...

    def refusal(self, question_text: str) -> str: ...

    def stream_guard(self) -> StreamGuard: ...


class StreamGuard(Protocol):
    def feed(self, delta: str) -> tuple[str, bool]:
        """Text that is safe to send now, and whether a blocked term was found."""

    def flush(self) -> tuple[str, bool]:
        """The held-back tail at the end of the stream, and whether it was blocked."""


class PromptGuard(Protocol):
    def clean(self, text: str, field: str) -> str:
        """Neutralise control-token spellings; raise InvalidRequest for over-long text."""


class AnswerCache(Protocol):
    async def get(self, key: str) -> Answer | None: ...

    async def put(self, key: str, answer: Answer) -> None: ...


class KeyBuilder(Protocol):
    def __call__(self, question: Question, model_id: str, policy: str) -> str: ...


class Submitter(Protocol):
    """The batcher: admits a request (or raises Overloaded) and returns its engine result."""

    async def submit(self, request: EngineRequest, model_key: str) -> EngineResult: ...


class ImageLoader(Protocol):
    async def load(self, ref: Any) -> bytes: ...


@dataclass
class Components:
    image_checker: ImageChecker | None = None
    output_filter: OutputFilter | None = None
    prompt_guard: PromptGuard | None = None
    cache: AnswerCache | None = None
    cache_key: KeyBuilder | None = None
    batcher: Submitter | None = None
    fetcher: ImageLoader | None = None
    observe: Callable[[str, float], None] | None = None  # (stage, seconds) -> metrics
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timer:
    timings: dict[str, float] = field(default_factory=dict)
    observe: Callable[[str, float], None] | None = None

    def add(self, stage: str, started: float) -> None:
        seconds = time.perf_counter() - started
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds * 1000.0
        if self.observe:
            self.observe(stage, seconds)


class Pipeline:
    def __init__(self, settings: Settings, engine: Engine, components: Components | None = None,
                 image_pool: ThreadPoolExecutor | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.c = components or Components()
        # Decoding and resizing are CPU work with the GIL mostly released (Pillow): keep it off the loop.
        self.image_pool = image_pool or ThreadPoolExecutor(max_workers=2, thread_name_prefix="vqa-img")
        # Concurrent identical cacheable misses share one generation (see cache/coalesce.py).
        self.inflight: Coalescer[Answer] = Coalescer(getattr(self.c.cache, "note_coalesced", None))
        # Fetch, decode, fit and hash; the same upload again (a cache hit's usual case) skips decoding.
        self.pictures = PictureLoader(settings, self.image_pool)

    # --- public API --------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.engine.info().model_id

    def public_models(self) -> list[str]:
        return [self.model_id, *self.engine.adapters()]

    async def answer(self, question: Question) -> Answer:
        timer = Timer(observe=self.c.observe)
        await self._prepare(question, timer)
        key = await self._cache_key(question)
        cached = await self._cache_get(key, timer)
        if cached is not None:
            cached.timings = timer.timings
            cached.request_id = question.request_id
            return cached
        if key is None:
            answer = self._moderate(question, await self._generate(question, timer), timer)
            answer.cache = "bypass"
            return answer
        answer, shared = await self.inflight.run(key, lambda: self._answer_fresh(question, key, timer))
        if shared:  # the leader's Answer object: give this request its own copy
            answer = dataclasses.replace(answer, usage=dataclasses.replace(answer.usage),
                                         timings=timer.timings, request_id=question.request_id,
                                         model=question.model or self.model_id)
        return answer

    async def _answer_fresh(self, question: Question, key: str, timer: Timer) -> Answer:
        """Generate, moderate and store one answer; runs once per key however many requests wait."""
        answer = self._moderate(question, await self._generate(question, timer), timer)
        answer.cache = "miss"
        if self._storable(question, answer):
            await self._cache_put(key, answer, timer)
        return answer

    async def open_stream(self, question: Question) -> tuple[CacheStatus, AsyncIterator[StreamDelta]]:
        """Validate everything up front (so errors become proper HTTP statuses), then stream."""
        timer = Timer(observe=self.c.observe)
        await self._prepare(question, timer)
        key = await self._cache_key(question)
        cached = await self._cache_get(key, timer)
        if cached is not None:
            return "hit", self._replay(cached)
        if key is not None and self.inflight.in_flight(key):
            return "miss", self._replay_shared(question, key, timer)
        request = self._engine_request(question)
        source = self._open_engine_stream(request, question)  # admitted now: a full queue is a 429
        return ("miss" if key else "bypass"), self._stream_fresh(question, key, timer, request, source)

    # --- stages ------------------------------------------------------------------------------------
    def budget(self) -> tuple[int, int]:
        """Pixel budget: the settings' budget intersected with what the model declares."""
        s = self.settings.images
        extra = self.engine.info().extra
        m_min = int(extra.get("min_pixels", s.min_pixels))  # type: ignore[call-overload]
        m_max = int(extra.get("max_pixels", s.max_pixels))  # type: ignore[call-overload]
        hi = min(s.max_pixels, m_max)
        lo = min(max(s.min_pixels, m_min), hi)
        return lo, hi

    async def _prepare(self, q: Question, timer: Timer) -> None:
        self._resolve_model(q)
        if len(q.image_refs) > self.settings.images.max_images:
            raise InvalidRequest(
                f"too many images: {len(q.image_refs)} (limit {self.settings.images.max_images}); "
                "send fewer images or raise VQA_MAX_IMAGES", param="messages")
        if q.deadline is None:
            q.deadline = time.monotonic() + self.settings.generation.request_timeout_s
        if self.c.prompt_guard:
            for ti, turn in enumerate(q.turns):
                for pi, part in enumerate(turn.parts):
                    if part.text is not None:
                        part.text = self.c.prompt_guard.clean(part.text, f"messages[{ti}].content[{pi}]")
        t0 = time.perf_counter()
        await self.pictures.load([p for t in q.turns for p in t.parts if p.image_ref is not None],
                                 *self.budget(), fetcher=self.c.fetcher)
        timer.add("decode", t0)
        if self.c.image_checker and q.images:
            t1 = time.perf_counter()
            loop = asyncio.get_running_loop()
            for image in q.images:
                await loop.run_in_executor(self.image_pool, self.c.image_checker.check, image)
            timer.add("safety", t1)

    def _resolve_model(self, q: Question) -> None:
        if q.model in (None, "", self.model_id):
            q.adapter = None
            return
        if q.model in self.engine.adapters():
            q.adapter = q.model
            return
        raise NotFound(f"model {q.model!r} does not exist; GET /v1/models lists the served models",
                       param="model")

    def _policy(self) -> str:
        return getattr(self.c.output_filter, "version", "none")

    def _model_identity(self) -> str:
        """The model id plus the engine's weights fingerprint, when it reports one (a retrained
        model under the same name must not be answered from the old model's entries)."""
        fingerprint = self.engine.info().extra.get("fingerprint")
        return f"{self.model_id}@{fingerprint}" if fingerprint else self.model_id

    async def _cache_key(self, q: Question) -> str | None:
        if not (self.c.cache and self.c.cache_key and q.cache and q.params.deterministic):
            return None
        builder, identity, policy = self.c.cache_key, self._model_identity(), self._policy()
        if getattr(builder, "blocking", False):  # e.g. near-duplicate hashing: milliseconds of numpy
            return await asyncio.get_running_loop().run_in_executor(
                self.image_pool, builder, q, identity, policy)
        return builder(q, identity, policy)

    async def _cache_get(self, key: str | None, timer: Timer) -> Answer | None:
        if key is None or self.c.cache is None:
            return None
        t0 = time.perf_counter()
        try:
            hit = await self.c.cache.get(key)
        finally:
            timer.add("cache", t0)
        if hit is not None:
            hit.cache = "hit"
        return hit

    async def _cache_put(self, key: str, answer: Answer, timer: Timer) -> None:
        assert self.c.cache is not None
        t0 = time.perf_counter()
        await self.c.cache.put(key, answer)
        timer.add("cache", t0)

    def _storable(self, q: Question, a: Answer) -> bool:
        return q.params.deterministic and a.finish_reason != "content_filter"

    def _engine_request(self, q: Question) -> EngineRequest:
        return EngineRequest(turns=q.turns, params=q.params, adapter=q.adapter,
                             request_id=q.request_id, deadline=q.deadline)

    async def _generate(self, q: Question, timer: Timer) -> EngineResult:
        request = self._engine_request(q)
        t0 = time.perf_counter()
        try:
            if self.c.batcher is not None:
                result = await self.c.batcher.submit(request, q.adapter or "")
            else:
                (result,) = await self._within_deadline(self.engine.generate([request]), request)
        except asyncio.CancelledError:
            request.cancel.set()  # the client went away: stop generating for it
            raise
        timer.add("generate", t0)
        if isinstance(result, VQAError):
            raise result
        return result

    async def _within_deadline(self, coro: Any, request: EngineRequest) -> Any:
        remaining = None if request.deadline is None else max(0.0, request.deadline - time.monotonic())
        try:
            return await asyncio.wait_for(coro, remaining)
        except TimeoutError:
            request.cancel.set()
            raise DeadlineExceeded("the answer took longer than the request deadline; "
                                   "retry, or raise VQA_REQUEST_TIMEOUT_S") from None

    def _moderate(self, q: Question, result: EngineResult, timer: Timer) -> Answer:
        text, finish = result.text, result.finish_reason
        if self.c.output_filter is not None:
            t0 = time.perf_counter()
            if self.c.output_filter.is_blocked(text):
                text, finish = self.c.output_filter.refusal(q.last_user_text), "content_filter"
            timer.add("safety_out", t0)
        return Answer(text=text, model=q.model or self.model_id, finish_reason=finish,
                      usage=result.usage, timings=timer.timings, request_id=q.request_id)

    async def _replay(self, answer: Answer) -> AsyncIterator[StreamDelta]:
        """A finished answer as a stream, word by word (the pieces join to exactly the text)."""
        pieces = [p for p in re.split(r"(?<=\s)(?=\S)", answer.text) if p] or [""]
        for piece in pieces[:-1]:
            yield StreamDelta(text=piece)
        yield StreamDelta(text=pieces[-1], finish_reason=answer.finish_reason, usage=answer.usage)

    async def _replay_shared(self, q: Question, key: str, timer: Timer) -> AsyncIterator[StreamDelta]:
        """An identical request is generating right now: wait for its answer and replay it."""
        answer, _ = await self.inflight.run(key, lambda: self._answer_fresh(q, key, timer))
        async for delta in self._replay(answer):
            yield delta

    def _open_engine_stream(self, request: EngineRequest, q: Question) -> Any:
        """The engine's stream, through the batcher's queue when there is one (same turn-taking)."""
        opener = getattr(self.c.batcher, "open_stream", None)
        if opener is not None:
            return opener(request, q.adapter or "")
        return self.engine.stream(request)

    async def _stream_fresh(self, q: Question, key: str | None, timer: Timer, request: EngineRequest,
                            gen: Any) -> AsyncIterator[StreamDelta]:
        guard = self.c.output_filter.stream_guard() if self.c.output_filter else None
        pieces: list[str] = []
        final: StreamDelta | None = None
        t0 = time.perf_counter()
        try:
            async for delta in gen:
                if request.should_stop() and request.deadline and time.monotonic() > request.deadline:
                    raise DeadlineExceeded("the answer took longer than the request deadline")
                text = delta.text
                if guard is not None:
                    text, blocked = guard.feed(text)
                    if blocked:
                        request.cancel.set()
                        assert self.c.output_filter is not None
                        yield StreamDelta(text="", finish_reason="content_filter", usage=delta.usage)
                        return
                pieces.append(text)
                if delta.finish_reason is not None:
                    final = delta
                    if guard is not None:
                        tail, blocked = guard.flush()
                        if blocked:
                            yield StreamDelta(text="", finish_reason="content_filter", usage=delta.usage)
                            return
                        text += tail
                        pieces.append(tail)
                    # Store before the last yield: a client that leaves right after it still counts.
                    if (key and self.c.cache is not None and q.params.deterministic
                            and delta.finish_reason != "content_filter"):
                        await self._cache_put(key, Answer(
                            text="".join(pieces), model=q.model or self.model_id,
                            finish_reason=delta.finish_reason, usage=delta.usage or Usage()), timer)
                    yield StreamDelta(text=text, finish_reason=delta.finish_reason, usage=delta.usage)
                    break
                if text:
                    yield StreamDelta(text=text)
            else:
                # The engine ended without a finish_reason: the held-back tail must still be released
                # (or blocked), and the client still needs a final chunk.
                if not request.should_stop():
                    tail, blocked = guard.flush() if guard is not None else ("", False)
                    final = StreamDelta(text="" if blocked else tail,
                                        finish_reason="content_filter" if blocked else "stop")
                    yield final
                    if blocked:
                        return
                    pieces.append(tail)
        finally:
            # A client that disconnects closes this generator: tell the engine to stop.
            if final is None:
                request.cancel.set()
            await gen.aclose()
        timer.add("generate", t0)
