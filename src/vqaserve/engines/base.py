"""The engine seam: everything that turns an EngineRequest into text sits behind this protocol.

Engines know nothing of HTTP, caches or safety. `generate` takes a batch and returns one result or
one error per request, so a single bad request fails alone. `stream` yields text deltas for one
request; engines without native streaming fall back to one whole delta.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from vqaserve.errors import VQAError
from vqaserve.types import EngineRequest, EngineResult, StreamDelta


@dataclass
class EngineInfo:
    model_id: str  # the public name of the base model (e.g. "shop-toy")
    dtype: str = "n/a"
    device: str = "n/a"
    max_context: int = 0
    adapters: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)


class Engine(abc.ABC):
    """One model (plus its LoRA adapters). Subclasses implement `generate`; the rest has defaults."""

    name: str = "engine"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights; called once in the server lifespan (or by the CLI) before any request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free resources."""

    @abc.abstractmethod
    def info(self) -> EngineInfo: ...

    def adapters(self) -> list[str]:
        return list(self.info().adapters)

    @abc.abstractmethod
    async def generate(self, batch: Sequence[EngineRequest]) -> list[EngineResult | VQAError]:
        """Answer every request of a compatible batch (same adapter, same batch_key)."""

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamDelta]:
        (result,) = await self.generate([request])
        if isinstance(result, VQAError):
            raise result
        yield StreamDelta(text=result.text, finish_reason=result.finish_reason, usage=result.usage)

    async def health(self) -> dict[str, object]:
        """Extra state for /ready (e.g. an upstream's breaker)."""
        return {"ok": True}

    def count_tokens(self, text: str) -> int:
        """Best-effort token count for usage when an engine cannot say (e.g. cached replays)."""
        return max(1, len(text.split()))
