"""The engine seam: everything that turns an EngineRequest into text sits behind this protocol.

Engines know nothing of HTTP, caches or safety. `generate` takes a batch and returns one result or
one error per request, so a single bad request fails alone. `stream` yields text deltas for one
request; engines without native streaming fall back to one whole delta. `generate_streams` is
`generate` for a batch in which some rows stream: their deltas go to per-row sinks as they come.
Every result (and a stream's last delta) carries the answer's confidence (confidence.py) and, when
the request asked for them (GenerationParams.logprobs), its tokens' log-probabilities.
Adapters are served by name through `adapter_table` (engines/adapters.py): an engine that can take
new weights while it runs overrides `adapter_version` and gives its table attach/detach hooks.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from vqaserve.breaker import CircuitBreaker
from vqaserve.engines.adapters import AdapterTable, AdapterVersion, Loaded, check_name
from vqaserve.errors import InvalidRequest, VQAError
from vqaserve.images.budget import PixelBudget
from vqaserve.types import EngineRequest, EngineResult, StreamDelta, Usage

# Receives a streaming row's text deltas, on the event loop; together they are a prefix of its answer.
DeltaSink = Callable[[str], None]


@dataclass
class EngineInfo:
    model_id: str  # the public name of the base model (e.g. "shop-toy")
    dtype: str = "n/a"
    device: str = "n/a"
    max_context: int = 0
    adapters: list[str] = field(default_factory=list)
    # The pixel budget the model's own image processor declares (None: it declares none).
    pixel_budget: PixelBudget | None = None
    # A digest of the base model's weights when the engine can tell: part of the answer cache's key,
    # so a retrained model under the same name never gets the old model's answers. (Each adapter has
    # its own, in its version: engines/adapters.py.)
    fingerprint: str = ""


class Engine(abc.ABC):
    """One model (plus its LoRA adapters). Subclasses implement `generate`; the rest has defaults."""

    name: str = "engine"
    # True for a model server that batches continuously itself (vLLM): wiring then gives it the
    # concurrency gate (admission only) instead of the micro-batcher.
    batches_itself: bool = False
    _adapter_table: AdapterTable | None = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights; called once in the server lifespan (or by the CLI) before any request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free resources."""

    @abc.abstractmethod
    def info(self) -> EngineInfo: ...

    def adapters(self) -> list[str]:
        """The public names of the adapters served now."""
        return self.adapter_table.names()

    @property
    def adapter_table(self) -> AdapterTable:
        """Adapters by name and version. Engines that change them while running set their own table
        (with attach/detach hooks); the default is a fixed one of `info().adapters`."""
        if self._adapter_table is None:
            self._adapter_table = AdapterTable.fixed(self.info().adapters)
        return self._adapter_table

    async def load_adapter(self, name: str, path: str) -> Loaded:
        """Serve the adapter at `path` under `name`, replacing the version served there (requests in
        flight keep theirs)."""
        check_name(name, self.info().model_id)
        return await self.adapter_table.load(await self.adapter_version(name, path))

    async def unload_adapter(self, name: str) -> AdapterVersion:
        """Stop serving `name`: new requests get 404, requests in flight finish on their version."""
        return await self.adapter_table.unload(name)

    async def adapter_version(self, name: str, path: str) -> AdapterVersion:
        """The version `path` holds (checked, fingerprinted), before it is attached."""
        raise InvalidRequest(f"the {self.name} engine cannot load adapters while it runs; start it with "
                             "VQA_ADAPTERS instead", param="path")

    @abc.abstractmethod
    async def generate(self, batch: Sequence[EngineRequest]) -> list[EngineResult | VQAError]:
        """Answer every request of a compatible batch (same adapter, same batch_key)."""

    async def stream(self, request: EngineRequest) -> AsyncGenerator[StreamDelta, None]:
        (result,) = await self.generate([request])
        if isinstance(result, VQAError):
            raise result
        yield StreamDelta(text=result.text, finish_reason=result.finish_reason, usage=result.usage,
                          confidence=result.confidence, logprobs=result.logprobs)

    async def generate_streams(self, batch: Sequence[EngineRequest],
                               sinks: Sequence[DeltaSink | None]) -> list[EngineResult | VQAError]:
        """`generate`, handing each row that has a sink its text deltas as they come.

        This default streams each such row on its own (`stream`) beside one `generate` for the
        rest; the in-process engine overrides it with one batched generate for all rows.
        """
        out: list[EngineResult | VQAError | None] = [None] * len(batch)
        plain = [i for i, sink in enumerate(sinks) if sink is None]

        async def rest() -> None:
            if plain:
                for i, result in zip(plain, await self.generate([batch[i] for i in plain]), strict=True):
                    out[i] = result

        async def one(i: int, sink: DeltaSink) -> None:
            text, last = "", StreamDelta()
            try:
                async for delta in self.stream(batch[i]):
                    if delta.text:
                        sink(delta.text)
                        text += delta.text
                    last = delta
            except VQAError as exc:
                out[i] = exc
                return
            out[i] = EngineResult(text=text, finish_reason=last.finish_reason or "stop",
                                  usage=last.usage or Usage(), confidence=last.confidence, logprobs=last.logprobs)

        await asyncio.gather(rest(), *(one(i, s) for i, s in enumerate(sinks) if s is not None))
        return [r if r is not None else EngineResult("", "stop", Usage()) for r in out]

    def breakers(self) -> dict[str, CircuitBreaker]:
        """The circuit breakers guarding this engine's backends, by name (exported as metrics)."""
        return {}

    async def health(self) -> dict[str, object]:
        """Extra state for /ready (e.g. an upstream's breaker)."""
        return {"ok": True}

    def count_tokens(self, text: str) -> int:
        """Best-effort token count for usage when an engine cannot say (e.g. cached replays)."""
        return max(1, len(text.split()))
