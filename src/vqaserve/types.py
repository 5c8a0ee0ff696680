"""The data that travels along the one request path (see pipeline.py)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "content_filter"]
CacheStatus = Literal["hit", "miss", "bypass"]


@dataclass(frozen=True)
class ImageRef:
    """An image as the client sent it, not yet fetched or decoded.

    kind: "bytes" (upload), "data" (data: URI or bare base64), "url" (http/https), "path" (local file).
    """

    kind: Literal["bytes", "data", "url", "path"]
    payload: bytes | str
    name: str = "image"  # how errors refer to it, e.g. "messages[0].content[1].image_url"


@dataclass(frozen=True)
class NormalizedImage:
    """A decoded, validated, RGB image fitted to the pixel budget, with its content hash."""

    image: Image.Image
    content_hash: str  # over the normalized pixels + width, height, mode
    width: int
    height: int
    original_size: tuple[int, int]
    source: str = "image"
    # The client's own file, when decoding it gives exactly these pixels (already RGB, upright and
    # inside the budget) in a format model servers read: (mime type, bytes). The gateway forwards it
    # as it came instead of encoding the pixels again.
    encoded: tuple[str, bytes] | None = None

    @property
    def memory_bytes(self) -> int:
        return self.width * self.height * 3 + (len(self.encoded[1]) if self.encoded else 0)

    @property
    def visual_tokens(self) -> int:
        return (self.width // 32) * (self.height // 32)


@dataclass
class Part:
    """One piece of a turn: text, or an image (a ref before resolution, a NormalizedImage after)."""

    text: str | None = None
    image_ref: ImageRef | None = None
    image: NormalizedImage | None = None

    @property
    def is_image(self) -> bool:
        return self.image_ref is not None or self.image is not None


@dataclass
class Turn:
    role: Role
    parts: list[Part]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if p.text is not None)


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # vLLM's sampling extensions; at their defaults they change nothing (see extensions()).
    min_tokens: int = 0  # EOS, stop_token_ids and stop strings cannot end the answer before this
    ignore_eos: bool = False  # the model's EOS does not stop generation (benchmarks' fixed lengths)
    # None = the model's own default (its generation_config), as vLLM does; a sent value wins.
    min_p: float | None = None  # sampling only: drop tokens below min_p * the top token's probability
    repetition_penalty: float | None = None  # > 1 discourages tokens already in the prompt or answer
    stop_token_ids: tuple[int, ...] = ()  # extra token ids that end the answer, like EOS
    include_stop_str_in_output: bool = False  # keep the stop string (or stop token) in the text
    # Structured output: the JSON Schema the answer must follow, as canonical JSON text ("" = free
    # text; see engines/structured.py). Not in batch_key(): the engine masks each row on its own.
    json_schema: str = ""
    # OpenAI's logprobs: None = not asked; k = the chosen tokens' log-probabilities and the k most
    # likely at each place (top_logprobs, 0..20). Per row, so not in batch_key(); such a request
    # bypasses the answer cache (pipeline._cache_key), so not in the key either.
    logprobs: int | None = None

    def extensions(self) -> dict[str, object]:
        """The vLLM extensions a client set (away from the no-op default), under vLLM's names.

        One list for the upstream body, the cache key and the batch key, so a new extension
        cannot reach one of them and be forgotten in another.
        """
        out: dict[str, object] = {}
        if self.min_tokens > 0:
            out["min_tokens"] = self.min_tokens
        if self.ignore_eos:
            out["ignore_eos"] = True
        if self.min_p is not None:
            out["min_p"] = self.min_p
        if self.repetition_penalty is not None:
            out["repetition_penalty"] = self.repetition_penalty
        if self.stop_token_ids:
            out["stop_token_ids"] = self.stop_token_ids
        if self.include_stop_str_in_output:
            out["include_stop_str_in_output"] = True
        return out

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def deterministic(self) -> bool:
        """Greedy, or sampling with a fixed seed: the same request gives the same answer."""
        return self.greedy or self.seed is not None

    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys may share one batched generate() call.

        The extensions are in it because an engine applies them to the whole call (logits
        processors, the EOS ids), not per row.
        """
        ext = tuple(sorted(self.extensions().items()))
        if self.greedy:
            return ("greedy", *ext)
        return ("sample", self.temperature, self.top_p, self.top_k, self.seed, *ext)


@dataclass
class Question:
    """A parsed, validated request: turns (text + images), generation params, model and adapter."""

    turns: list[Turn]
    params: GenerationParams = field(default_factory=GenerationParams)
    model: str | None = None  # the public name asked for (base model or adapter name)
    # Set by the pipeline: the public name of the model that answers (a canary route may pick another
    # than the one asked for) and, for an adapter, its version key NAME@FINGERPRINT (None: the base).
    answered_by: str = ""
    adapter: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream: bool = False
    cache: bool = True  # the client may opt out of the answer cache
    deadline: float | None = None  # time.monotonic() value after which the answer is useless

    @property
    def images(self) -> list[NormalizedImage]:
        return [p.image for t in self.turns for p in t.parts if p.image is not None]

    @property
    def image_refs(self) -> list[ImageRef]:
        return [p.image_ref for t in self.turns for p in t.parts if p.image_ref is not None]

    @property
    def served_by(self) -> str:
        """Which weights answer: the adapter's version key, or the base model's name."""
        return self.adapter or self.answered_by

    @property
    def last_user_text(self) -> str:
        for turn in reversed(self.turns):
            if turn.role == "user":
                return turn.text
        return ""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


class StopSignal(threading.Event):
    """A threading.Event (generation threads check it) that coroutines can also await without polling."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    async def wait_set(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._waiters_lock:
            if self.is_set():
                return
            self._waiters.append((loop, future))
        try:
            await future
        finally:
            with self._waiters_lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class EngineRequest:
    """What an engine sees: turns with normalized images, params, adapter; and a stop signal."""

    turns: list[Turn]
    params: GenerationParams
    adapter: str | None = None
    request_id: str = ""
    deadline: float | None = None
    cancel: StopSignal = field(default_factory=StopSignal)

    @property
    def images(self) -> list[NormalizedImage]:
        return [p.image for t in self.turns for p in t.parts if p.image is not None]

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.past_deadline()

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0 once passed); None without a deadline."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as OpenAI's logprobs show it: its text, log-probability and UTF-8 bytes, and
    (when top_logprobs was asked) the most likely tokens at its place, most likely first."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None
    top: tuple[TokenLogprob, ...] = ()


@dataclass
class EngineResult:
    text: str
    finish_reason: FinishReason
    usage: Usage
    confidence: float | None = None  # how sure the model was of this answer (0..1, confidence.py); None: not known
    logprobs: list[TokenLogprob] | None = None  # every generated token, when params.logprobs asked for them


@dataclass
class StreamDelta:
    """A piece of streamed output. The last one carries finish_reason and usage."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    confidence: float | None = None  # on the last delta, as EngineResult.confidence
    logprobs: list[TokenLogprob] | None = None  # on the last delta: all of them, as EngineResult.logprobs


@dataclass
class Answer:
    text: str
    model: str  # the public name of the model that answered
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    cache: CacheStatus = "bypass"
    timings: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds
    request_id: str = ""
    served_by: str = ""  # which weights answered (Question.served_by): the x-vqa-model header, metrics
    confidence: float | None = None  # as EngineResult.confidence; answers under VQA_REVIEW_BELOW are flagged
    logprobs: list[TokenLogprob] | None = None  # as EngineResult.logprobs (None for a refusal)

    @property
    def cached(self) -> bool:
        return self.cache == "hit"
