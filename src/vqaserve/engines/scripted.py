"""A deterministic engine for tests and demos: scripted answers, delays and faults on demand.

Answers come from rules matched against the last user text (first match wins), else an echo of the
form "answer to: <question>". Faults are triggered by markers in the question so a single request
inside a batch can fail alone:
    [[raise]]  -> EngineFailure for that request        [[oom]] -> EngineFailure("out of memory")
    [[sleep:S]] -> that request takes S more seconds     [[say:TEXT]] -> answers TEXT verbatim
    [[confidence:C]] -> the answer's confidence is C (0..1; else 1.0)
Asked for logprobs, it gives one token per word: the first with log-probability ln C, the rest 0,
so the confidence rule (confidence.py) gives C back.
It records every batch it saw, every request that was told to stop, and counts generations.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from vqaserve import confidence
from vqaserve.engines.adapters import AdapterTable, AdapterVersion, fingerprint_of
from vqaserve.engines.base import Engine, EngineInfo
from vqaserve.errors import EngineFailure, VQAError
from vqaserve.images.budget import PixelBudget
from vqaserve.types import EngineRequest, EngineResult, StreamDelta, TokenLogprob, Usage

_SLEEP = re.compile(r"\[\[sleep:([0-9.]+)\]\]")
_SAY = re.compile(r"\[\[say:(.*?)\]\]", re.DOTALL)
_CONFIDENCE = re.compile(r"\[\[confidence:([0-9]*\.?[0-9]+)\]\]")


@dataclass
class ScriptedEngine(Engine):
    model_id: str = "scripted"
    rules: dict[str, str] = field(default_factory=dict)  # substring of question -> answer
    delay_s: float = 0.0  # per generate() call
    token_delay_s: float = 0.0  # per streamed word
    adapter_names: list[str] = field(default_factory=list)
    pixel_budget: PixelBudget | None = None  # as a model's image processor would declare it
    fingerprint: str = ""  # as a real engine's weights digest
    batches: list[list[str]] = field(default_factory=list)  # request ids per generate() call
    stopped: list[str] = field(default_factory=list)  # request ids whose stop signal was seen
    generations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    name = "scripted"

    def __post_init__(self) -> None:
        self._adapter_table = AdapterTable.fixed(self.adapter_names)

    def info(self) -> EngineInfo:
        return EngineInfo(model_id=self.model_id, dtype="none", device="cpu", max_context=4096,
                          adapters=self.adapters(), pixel_budget=self.pixel_budget,
                          fingerprint=self.fingerprint)

    async def adapter_version(self, name: str, path: str) -> AdapterVersion:
        """Any path: a directory's files are fingerprinted as a real engine's would be."""
        return AdapterVersion(name, fingerprint_of(path), path, requested=path)

    def reply(self, request: EngineRequest) -> str:
        question = ""
        for turn in reversed(request.turns):
            if turn.role == "user":
                question = turn.text
                break
        said = _SAY.search(question)
        if said:
            return said.group(1)
        for needle, answer in self.rules.items():
            if needle in question:
                return answer
        prefix = f"[{request.adapter}] " if request.adapter else ""
        images = len(request.images)
        return f"{prefix}answer to: {question.strip()}" + (f" ({images} image)" if images else "")

    async def _one(self, request: EngineRequest) -> EngineResult | VQAError:
        question = " ".join(t.text for t in request.turns if t.role == "user")
        if "[[raise]]" in question:
            return EngineFailure("the engine failed on this request; retry", retry_after=1)
        if "[[oom]]" in question:
            return EngineFailure("the engine ran out of memory; retry with fewer or smaller images",
                                 retry_after=1)
        m = _SLEEP.search(question)
        if m:
            end = time.monotonic() + float(m.group(1))
            while time.monotonic() < end:
                if request.should_stop():
                    with self._lock:
                        self.stopped.append(request.request_id)
                    return EngineFailure("generation stopped")
                await asyncio.sleep(0.01)
        text = self.reply(request)
        words = len(text.split())
        tokens = _tokens(text, _scripted_confidence(question), request.params.logprobs or 0)
        return EngineResult(text=text, finish_reason="stop",
                            usage=Usage(prompt_tokens=len(question.split()) + 10 * len(request.images),
                                        completion_tokens=words),
                            confidence=confidence.of_answer([t.logprob for t in tokens], ended_by_token=False),
                            logprobs=tokens if request.params.logprobs is not None else None)

    async def generate(self, batch: Sequence[EngineRequest]) -> list[EngineResult | VQAError]:
        with self._lock:
            self.batches.append([r.request_id for r in batch])
            self.generations += len(batch)
        # Like a real engine's worker thread, the work goes on when the caller is cancelled; it
        # stops only by noticing request.should_stop().
        return await asyncio.shield(asyncio.ensure_future(self._run(batch)))

    async def _run(self, batch: Sequence[EngineRequest]) -> list[EngineResult | VQAError]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return list(await asyncio.gather(*(self._one(r) for r in batch)))

    async def stream(self, request: EngineRequest) -> AsyncGenerator[StreamDelta, None]:
        (result,) = await self.generate([request])
        if isinstance(result, VQAError):
            raise result
        words = result.text.split(" ")
        last_sent = False
        try:
            for i, word in enumerate(words):
                if request.should_stop():
                    with self._lock:
                        self.stopped.append(request.request_id)
                    return
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                piece = word if i == 0 else " " + word
                if i == len(words) - 1:
                    last_sent = True
                    yield StreamDelta(text=piece, finish_reason=result.finish_reason, usage=result.usage,
                                      confidence=result.confidence, logprobs=result.logprobs)
                else:
                    yield StreamDelta(text=piece)
        except (GeneratorExit, asyncio.CancelledError):
            # Closed or cancelled mid-answer (the client left): that is a stop too.
            if not last_sent:
                with self._lock:
                    self.stopped.append(request.request_id)
            raise


def _scripted_confidence(question: str) -> float:
    m = _CONFIDENCE.search(question)
    return min(1.0, float(m.group(1))) if m else 1.0


def _tokens(text: str, conf: float, top: int) -> list[TokenLogprob]:
    """One token per word (with its leading space): the first at ln(conf), the others certain."""
    words = re.findall(r"\s*\S+|\s+", text) or [""]
    out = []
    for i, word in enumerate(words):
        logprob = (math.log(conf) if conf > 0 else -9999.0) if i == 0 else 0.0
        entry = TokenLogprob(word, logprob, tuple(word.encode()))
        out.append(TokenLogprob(word, logprob, entry.bytes, (entry,) if top else ()))
    return out
