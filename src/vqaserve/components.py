"""The pipeline's seams: what each stage component must offer (typed Protocols), and the bundle
of components `wiring.build_components` makes and `Pipeline` runs. Every call the pipeline, the
server and wiring make across a seam is declared here (checked by mypy's strict settings)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from vqaserve.types import (
    Answer,
    CacheStatus,
    EngineRequest,
    EngineResult,
    ImageRef,
    NormalizedImage,
    Question,
    StreamDelta,
)


# Implemented in safety/, cache/, scheduling/ and images/fetch.py.
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

    def note_coalesced(self) -> None:
        """A request was answered by another's in-flight generation (a hit of a kind: counted)."""


class KeyBuilder(Protocol):
    # True when building a key is CPU work (near-duplicate image hashing): it runs off the loop.
    blocking: bool

    def __call__(self, question: Question, model_id: str, policy: str) -> str: ...


class DeltaStream(Protocol):
    """A stream of deltas its reader must close (`aclose`) when it stops early: closing is what tells
    the engine to stop generating and frees the stream's admission slot."""

    def __aiter__(self) -> AsyncIterator[StreamDelta]: ...

    async def __anext__(self) -> StreamDelta: ...

    async def aclose(self) -> None: ...


class Submitter(Protocol):
    """The batcher (batching.py) or the gate (gate.py): admits a request now (or raises Overloaded,
    ShuttingDown, DeadlineExceeded) and returns its engine result or stream under its deadline."""

    @property
    def depth(self) -> int:
        """Requests admitted and not yet handed to (batcher) or answered by (gate) the engine."""

    async def submit(self, request: EngineRequest, model_key: str) -> EngineResult: ...

    def open_stream(self, request: EngineRequest, model_key: str) -> DeltaStream: ...

    async def close(self) -> None: ...


class ImageLoader(Protocol):
    async def load(self, ref: ImageRef) -> bytes: ...


# /ready calls each probe and shows its dict under the probe's name; "status": "degraded" (or
# "degraded": true) makes /ready say degraded while answers still flow (e.g. Redis down).
HealthProbe = Callable[[], Awaitable[dict[str, object]]]


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
    # An answer given (read to its end, for a stream): (which weights answered, i.e. Question.served_by;
    # cache status; seconds since the request reached the pipeline; its confidence; flagged for
    # review) -> metrics by answering model
    answered: Callable[[str, CacheStatus, float, float | None, bool], None] | None = None
    health: dict[str, HealthProbe] = field(default_factory=dict)
    # Run at server shutdown, in order (the batcher first, then the Redis pool); one failing
    # does not skip the others.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
