"""THE request path. Only this module knows the order of the stages:

    question -> images (fetch, decode, validate, fit, hash) -> safety_in (image check, prompt guard)
             -> route (which model answers; its adapter version pinned) -> cache lookup
             -> batcher (admit or 429) -> engine -> safety_out (blocklist)
             -> cache write (complete, allowed, deterministic answers only) -> Answer

Routes, the CLI, `vqa eval` and the web page all call `Pipeline.answer` / `Pipeline.open_stream`.
Each stage is a component passed in; a missing component means that stage is skipped ("bypass").
A stream is an answer whose pieces the client sees as they come: the same moderation (a blocked
answer ends with the refusal text), the same cache-write rule (`_conclude`), the same deadline rule
(scheduling/admission.py) and the same coalescing (while it generates, identical requests wait for its answer).
An adapter version pinned by `_route` is released when the answer or the stream ends, however it ends:
until then a reload or unload leaves that version's weights in place (engines/adapters.py).
Every answer carries the engine's confidence (confidence.py; a stream: on its last delta), stored with
it in the cache; a refusal's is 0 (the client got no answer: hand over). A request asking for
logprobs bypasses the cache (the cached answer has none).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vqaserve import confidence
from vqaserve.cache.coalesce import Coalescer
from vqaserve.components import Components, DeltaStream
from vqaserve.engines.base import Engine
from vqaserve.errors import DeadlineExceeded, InvalidRequest, NotFound, VQAError
from vqaserve.images.budget import PixelBudget, pixel_budget
from vqaserve.images.loading import PictureLoader
from vqaserve.routing import RoutingTable
from vqaserve.scheduling.admission import within_deadline
from vqaserve.settings import Settings
from vqaserve.streams import Concluded, relay, replay
from vqaserve.types import (
    Answer,
    CacheStatus,
    EngineRequest,
    EngineResult,
    FinishReason,
    Question,
    StreamDelta,
    TokenLogprob,
    Usage,
)

REFUSED = 0.0  # the confidence of an answer the output filter replaced with its refusal


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
        self.inflight: Coalescer[Answer] = Coalescer(self.c.cache.note_coalesced if self.c.cache else None)
        # Fetch, decode, fit and hash; the same upload again (a cache hit's usual case) skips decoding.
        self.pictures = PictureLoader(settings, self.image_pool)
        self.routes = RoutingTable()  # canary shares (routing.py), changed by the admin API

    # --- public API --------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.engine.info().model_id

    def public_models(self) -> list[str]:
        return [self.model_id, *self.engine.adapters()]

    async def answer(self, question: Question) -> Answer:
        started, timer = time.perf_counter(), Timer(observe=self.c.observe)
        await self._prepare(question, timer)
        try:
            answer = await self._answer_prepared(question, timer)
        finally:
            self._release(question)
        self._answered(question, answer.cache, started, answer.confidence)
        return answer

    async def _answer_prepared(self, question: Question, timer: Timer) -> Answer:
        key = await self._cache_key(question)
        cached = await self._cache_get(key, timer)
        if cached is not None:
            cached.timings = timer.timings
            cached.request_id = question.request_id
            cached.model, cached.served_by = question.answered_by, question.served_by
            return cached
        if key is None:
            return await self._answer_fresh(question, None, timer)
        answer, shared = await self.inflight.run(key, lambda: self._answer_fresh(question, key, timer))
        if shared:  # the leader's Answer object: give this request its own copy
            answer = dataclasses.replace(answer, usage=dataclasses.replace(answer.usage),
                                         timings=timer.timings, request_id=question.request_id)
        return answer

    async def _answer_fresh(self, question: Question, key: str | None, timer: Timer) -> Answer:
        """Generate, moderate and store one answer; runs once per key however many requests wait."""
        answer = self._moderate(question, await self._generate(question, timer), timer)
        await self._conclude(question, key, answer, timer)
        return answer

    async def open_stream(self, question: Question) -> tuple[CacheStatus, DeltaStream]:
        """Validate everything up front (so errors become proper HTTP statuses), then stream."""
        started, timer = time.perf_counter(), Timer(observe=self.c.observe)
        await self._prepare(question, timer)
        try:
            status, deltas = await self._open_prepared(question, timer)
        except BaseException:
            self._release(question)
            raise
        return status, Concluded(deltas, lambda finished, conf: self._stream_ended(question, status, started,
                                                                                   finished, conf))

    async def _open_prepared(self, question: Question,
                             timer: Timer) -> tuple[CacheStatus, AsyncGenerator[StreamDelta, None]]:
        key = await self._cache_key(question)
        cached = await self._cache_get(key, timer)
        if cached is not None:
            return "hit", replay(cached)
        if key is not None and self.inflight.in_flight(key):
            return "miss", self._replay_shared(question, key, timer)
        request = self._engine_request(question)
        source = self._open_engine_stream(request, question)  # admitted now: a full queue is a 429
        deltas: asyncio.Queue[StreamDelta] = asyncio.Queue()

        def generate() -> Awaitable[Answer]:
            return self._generate_stream(question, key, timer, request, source, deltas.put_nowait)

        if key is None:
            return "bypass", relay(asyncio.ensure_future(generate()), deltas)
        # No await since the in_flight check: this stream leads the flight others join.
        flight, _ = self.inflight.flight(key, generate)
        return "miss", relay(asyncio.ensure_future(self.inflight.wait(flight)), deltas)

    # --- stages ------------------------------------------------------------------------------------
    def budget(self) -> PixelBudget:
        """Pixel budget: the settings' budget intersected with what the model declares."""
        return pixel_budget(self.settings.images, self.engine.info().pixel_budget)

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
                                 *self.budget().as_tuple(), fetcher=self.c.fetcher)
        timer.add("decode", t0)
        if self.c.image_checker and q.images:
            t1 = time.perf_counter()
            loop = asyncio.get_running_loop()
            for image in q.images:
                await loop.run_in_executor(self.image_pool, self.c.image_checker.check, image)
            timer.add("safety", t1)
        self._route(q)  # last: from here on the adapter version is pinned until `_release`

    def _resolve_model(self, q: Question) -> None:
        """The model asked for exists (before any image work); who answers is `_route`'s."""
        q.adapter, q.answered_by = None, ""
        if q.model not in (None, "", self.model_id) and q.model not in self.engine.adapters():
            raise NotFound(f"model {q.model!r} does not exist; GET /v1/models lists the served models",
                           param="model")

    def _route(self, q: Question) -> None:
        """Which model answers (a canary route may pick another, sticky per picture), and for an
        adapter the version it answers with, pinned until the answer is done."""
        asked = q.model or self.model_id
        sticky = q.images[0].content_hash if q.images else q.request_id
        chosen = self.routes.pick(asked, sticky)
        if chosen != self.model_id and chosen not in self.engine.adapters():
            chosen = asked  # the target was unloaded after the route was set
        q.answered_by = chosen
        if chosen != self.model_id:
            q.adapter = self.engine.adapter_table.pin(chosen).key

    def _release(self, q: Question) -> None:
        if q.adapter is not None:
            self.engine.adapter_table.unpin(q.adapter)

    def _answered(self, q: Question, cache: CacheStatus, started: float, conf: float | None) -> None:
        if self.c.answered is not None:
            self.c.answered(q.served_by, cache, time.perf_counter() - started, conf,
                            confidence.needs_review(conf, self.settings.capture.review_below))

    def _stream_ended(self, q: Question, status: CacheStatus, started: float, finished: bool,
                      conf: float | None) -> None:
        self._release(q)
        if finished:
            self._answered(q, status, started, conf)

    def _policy(self) -> str:
        return self.c.output_filter.version if self.c.output_filter else "none"

    def _model_identity(self) -> str:
        """The model id plus the engine's weights fingerprint, when it reports one (a retrained
        model under the same name must not be answered from the old model's entries)."""
        fingerprint = self.engine.info().fingerprint
        return f"{self.model_id}@{fingerprint}" if fingerprint else self.model_id

    async def _cache_key(self, q: Question) -> str | None:
        if not (self.c.cache and self.c.cache_key and q.cache and q.params.deterministic) \
                or q.params.logprobs is not None:
            return None
        builder, identity, policy = self.c.cache_key, self._model_identity(), self._policy()
        if builder.blocking:  # e.g. near-duplicate hashing: milliseconds of numpy
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

    async def _conclude(self, q: Question, key: str | None, answer: Answer, timer: Timer) -> None:
        """The one cache-write rule, for answers and streams: a keyed, deterministic, allowed
        answer is stored."""
        answer.cache = "bypass" if key is None else "miss"
        if key is not None and q.params.deterministic and answer.finish_reason != "content_filter":
            await self._cache_put(key, answer, timer)

    def _engine_request(self, q: Question) -> EngineRequest:
        return EngineRequest(turns=q.turns, params=q.params, adapter=q.adapter,
                             request_id=q.request_id, deadline=q.deadline)

    async def _generate(self, q: Question, timer: Timer) -> EngineResult:
        request = self._engine_request(q)
        t0 = time.perf_counter()
        result: EngineResult | VQAError
        if self.c.batcher is not None:
            result = await self.c.batcher.submit(request, q.adapter or "")
        else:
            (result,) = await within_deadline(self.engine.generate([request]), request)
        timer.add("generate", t0)
        if isinstance(result, VQAError):
            raise result
        return result

    def _moderate(self, q: Question, result: EngineResult, timer: Timer) -> Answer:
        """A finished answer through the output filter: a blocked one becomes the refusal."""
        t0 = time.perf_counter()
        blocked = self.c.output_filter is not None and self.c.output_filter.is_blocked(result.text)
        if self.c.output_filter is not None:
            timer.add("safety_out", t0)
        if blocked:
            return self._answer_of(q, self._refusal(q), "content_filter", result.usage, timer, REFUSED)
        return self._answer_of(q, result.text, result.finish_reason, result.usage, timer, result.confidence,
                               result.logprobs)

    def _refusal(self, q: Question) -> str:
        assert self.c.output_filter is not None
        return self.c.output_filter.refusal(q.last_user_text)

    def _answer_of(self, q: Question, text: str, finish: FinishReason, usage: Usage | None, timer: Timer,
                   conf: float | None, logprobs: list[TokenLogprob] | None = None) -> Answer:
        return Answer(text=text, model=q.answered_by, finish_reason=finish, usage=usage or Usage(),
                      timings=timer.timings, request_id=q.request_id, served_by=q.served_by,
                      confidence=conf, logprobs=logprobs)

    async def _replay_shared(self, q: Question, key: str, timer: Timer) -> AsyncGenerator[StreamDelta, None]:
        """An identical request is generating right now: wait for its answer and replay it."""
        answer, _ = await self.inflight.run(key, lambda: self._answer_fresh(q, key, timer))
        async for delta in replay(answer):
            yield delta

    def _open_engine_stream(self, request: EngineRequest, q: Question) -> DeltaStream:
        """The engine's stream, through the Submitter when there is one (same admission and turns)."""
        if self.c.batcher is not None:
            return self.c.batcher.open_stream(request, q.adapter or "")
        return self.engine.stream(request)

    async def _generate_stream(self, q: Question, key: str | None, timer: Timer, request: EngineRequest,
                               source: DeltaStream, emit: Callable[[StreamDelta], None]) -> Answer:
        """Run one engine stream to its end: its text through the output guard to `emit`, the answer
        concluded (stored by the one rule) before its last delta, so a client that leaves right
        after that delta still counts. Returns the answer, for requests that joined the flight."""
        guard = self.c.output_filter.stream_guard() if self.c.output_filter else None
        pieces: list[str] = []
        final: StreamDelta | None = None
        t0 = time.perf_counter()
        try:
            async for delta in source:
                if request.past_deadline():
                    raise DeadlineExceeded()
                text, blocked = guard.feed(delta.text) if guard is not None else (delta.text, False)
                if delta.finish_reason is not None and guard is not None and not blocked:
                    tail, blocked = guard.flush()
                    text += tail
                if blocked:
                    return await self._refuse_stream(q, key, timer, request, delta, pieces, emit)
                pieces.append(text)
                if delta.finish_reason is not None:
                    final = delta
                    break
                if text:
                    emit(StreamDelta(text=text))
            else:
                # The engine ended without a finish_reason: the held-back tail is still released (or
                # blocked), and the client still gets a final chunk.
                if request.past_deadline():
                    raise DeadlineExceeded()
                tail, blocked = guard.flush() if guard is not None else ("", False)
                final = StreamDelta(finish_reason="stop")
                if blocked:
                    return await self._refuse_stream(q, key, timer, request, final, pieces, emit)
                pieces.append(tail)
                text = tail
            finish = final.finish_reason or "stop"  # set on both paths above; the type cannot say so
            answer = self._answer_of(q, "".join(pieces), finish, final.usage, timer, final.confidence,
                                     final.logprobs)
            await self._conclude(q, key, answer, timer)
            emit(StreamDelta(text=text, finish_reason=finish, usage=final.usage, confidence=final.confidence,
                             logprobs=final.logprobs))
            return answer
        finally:
            if final is None:  # failed, blocked or abandoned: tell the engine to stop
                request.cancel.set()
            await source.aclose()
            timer.add("generate", t0)

    async def _refuse_stream(self, q: Question, key: str | None, timer: Timer, request: EngineRequest,
                             last: StreamDelta, sent: list[str], emit: Callable[[StreamDelta], None]) -> Answer:
        """A stream the output guard blocked ends with the refusal text (the guard held the blocked
        words back, so only safe text preceded it); the answer is the refusal, as for `answer`."""
        request.cancel.set()  # stop generating what will not be shown
        refusal = self._refusal(q)
        answer = self._answer_of(q, refusal, "content_filter", last.usage, timer, REFUSED)
        await self._conclude(q, key, answer, timer)
        emit(StreamDelta(text=("\n" if "".join(sent).strip() else "") + refusal,
                         finish_reason="content_filter", usage=last.usage, confidence=REFUSED))
        return answer
