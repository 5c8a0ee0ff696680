"""In-process engine: any AutoModelForImageTextToText + AutoProcessor (Qwen3-VL first), CPU or GPU.

All torch work runs on ONE dedicated worker thread (a model and its tokenizer are not thread-safe);
the event loop only awaits it. A batch is split into groups that may share a forward pass (same
adapter, same sampling settings); each group is one batched processor call (left padding) and one
generate(); when a group fails, its members are retried one by one so only the bad one fails.
A follow-up question about a picture reuses its vision-tower output (vision_memo.py). Streaming
rows ride in the same generate(): a per-row streamer hands each its own text (row_streams.py).
LoRA adapters are loaded and removed while serving (peft_adapters.py) on the same worker thread, so
between two batches, each version under its own PEFT name (engines/adapters.py has the bookkeeping).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vqaserve.engines.adapters import AdapterTable, AdapterVersion
from vqaserve.engines.base import DeltaSink, Engine, EngineInfo
from vqaserve.engines.fingerprint import weights_fingerprint
from vqaserve.engines.hf_generation import (
    RowState,
    RowStopper,
    finish_text,
    generation_kwargs,
    penalty_processors,
    split_groups,
    stop_ids,
    to_messages,
)
from vqaserve.engines.model_source import public_model_id, resolve_model_source
from vqaserve.engines.peft_adapters import PeftAdapters, adapter_dir
from vqaserve.engines.placement import Placement, choose_placement, stored_parameters
from vqaserve.engines.row_streams import LoopHop, RowFeed, RowStreamer, RowText
from vqaserve.engines.structured import GrammarCache
from vqaserve.engines.token_logprobs import TokenLogprobs, TokenNames
from vqaserve.engines.vision_memo import VisionMemo, picture_ids, serving
from vqaserve.errors import ConfigError, DeadlineExceeded, EngineFailure, NotFound, VQAError
from vqaserve.images.budget import PixelBudget, processor_budget
from vqaserve.modeling.standins import standin_notice
from vqaserve.settings import Settings
from vqaserve.types import EngineRequest, EngineResult, GenerationParams, StreamDelta, Usage

log = logging.getLogger(__name__)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError)


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_name = settings.llm.model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqa-torch")
        self._model: Any = None
        self._processor: Any = None
        self._placement: Placement | None = None
        self._control_tokens: list[str] = []
        self._counter: Any = None  # a private tokenizer copy for count_tokens (off the worker thread)
        # Adapter versions on the model (worker thread only); errors name the model as clients know it.
        self._peft = PeftAdapters(public_model_id(self.model_name))
        self._adapter_table = AdapterTable(attach=self._attach, detach=self._detach)
        self._fingerprint = ""
        self._pixel_budget: PixelBudget | None = None  # what the model's image processor declares
        self._grammars: GrammarCache | None = None  # JSON-schema grammars for this tokenizer
        self._token_names: TokenNames | None = None  # logprobs' token texts and bytes
        self.vision_memo: VisionMemo | None = None  # vision-tower output per picture, for follow-ups
        self._picture_ids: list[str] = []  # the images of the last _prepare (worker thread only)
        # request_id -> generated tokens, for diagnostics and tests (bounded)
        self.generated_tokens: OrderedDict[str, int] = OrderedDict()

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._model is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None

    def _load(self) -> None:
        # resolved before the heavy import: a wrong name fails in milliseconds
        source = resolve_model_source(self.model_name)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        llm = self.settings.llm
        local = Path(source).is_dir()
        placement = choose_placement(llm.device, llm.dtype, stored_parameters(source) if local else None)
        log.info("placing %s on %s in %s: %s", self.model_name, placement.device, placement.dtype,
                 placement.reason)
        notice = standin_notice(source) if local else None
        if notice:
            log.warning("model %s: %s", self.model_name, notice)
        common = {"trust_remote_code": llm.trust_remote_code}
        try:
            processor = AutoProcessor.from_pretrained(source, **common)
            model: Any = AutoModelForImageTextToText.from_pretrained(
                source, dtype=placement.torch_dtype(), device_map=placement.device_map,
                attn_implementation=placement.attn_implementation, **common)
        except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear start-up line
            log.warning("loading %s failed: %r", source, exc)
            if _is_oom(exc):
                raise ConfigError(f"model {self.model_name!r} does not fit in memory on {placement.device}; "
                                  "`vqa doctor` shows what fits (smaller model, VQA_DTYPE, another GPU)"
                                  ) from None
            raise ConfigError(f"model {self.model_name!r} could not be loaded ({type(exc).__name__}); "
                              "check it is a complete AutoModelForImageTextToText directory or a "
                              "reachable hub id (`vqa doctor --model ...` checks it)") from None
        if placement.device_map is None:
            model.to(placement.device)
        model.eval()
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # batched generation continues every row from its last token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._control_tokens = sorted(
            (t.content for t in tokenizer.added_tokens_decoder.values() if t.special),
            key=len, reverse=True)
        from tokenizers import Tokenizer

        self._counter = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._model, self._processor, self._placement = model, processor, placement
        self._pixel_budget = processor_budget(processor.image_processor)
        self._token_names = TokenNames(tokenizer)
        self._grammars = GrammarCache(tokenizer, int(model.get_output_embeddings().weight.shape[0]),
                                      stop_ids(model.generation_config.eos_token_id, GenerationParams()))
        self._load_adapters()
        self.vision_memo = VisionMemo.install(self._model, llm.vision_memo_mb * 2**20, self._peft.peft_names())
        revision = getattr(model.config, "_commit_hash", None) or ""  # hub ids: the snapshot loaded
        self._fingerprint = weights_fingerprint([source if Path(source).is_dir() else source + revision])

    @property
    def module(self) -> Any:
        """The loaded torch model (None before start): for benchmarks that time its parts. Requests
        never touch it from here; generation runs on the engine's worker thread."""
        return self._model

    def _load_adapters(self) -> None:
        """The adapters named at start-up (VQA_ADAPTERS), attached before the first request."""
        for name, path in self.settings.llm.adapters.items():
            try:
                directory = adapter_dir(path)
            except VQAError as exc:
                raise ConfigError(f"adapter {name!r}: {exc.message}; VQA_ADAPTERS takes NAME=PATH") from None
            version = AdapterVersion(name, weights_fingerprint([directory]), directory)
            try:
                self._model = self._peft.attach(self._model, version)
            except VQAError as exc:
                raise ConfigError(exc.message) from None
            self.adapter_table.add(version)

    # --- adapters while serving (engines/adapters.py) ----------------------------------------------
    async def adapter_version(self, name: str, path: str) -> AdapterVersion:
        directory = adapter_dir(path)
        fingerprint = await asyncio.to_thread(weights_fingerprint, [directory])
        return AdapterVersion(name, fingerprint, directory, requested=path)

    async def _attach(self, version: AdapterVersion) -> None:
        await self._on_worker(self._peft.attach, version)

    async def _detach(self, version: AdapterVersion) -> None:
        await self._on_worker(self._peft.detach, version)

    async def _on_worker(self, change: Any, version: AdapterVersion) -> None:
        """Change the model's adapters on the worker thread, between two batches."""
        if self._model is None:
            raise EngineFailure("the model is not loaded yet; retry in a moment", retry_after=5)

        def run() -> None:
            self._model = change(self._model, version)
            if self.vision_memo is not None:
                self.vision_memo.adapters_changed(self._peft.peft_names())

        await asyncio.get_running_loop().run_in_executor(self._executor, run)

    # --- description -------------------------------------------------------------------------------
    def info(self) -> EngineInfo:
        max_context = 0
        if self._model is not None:
            config = getattr(self._model, "config", None)
            text = getattr(config, "text_config", config)
            max_context = int(getattr(text, "max_position_embeddings", 0) or 0)
        placement = self._placement
        return EngineInfo(model_id=public_model_id(self.model_name),
                          dtype=placement.dtype if placement else "n/a",
                          device=placement.device if placement else "n/a",
                          max_context=max_context, adapters=self.adapters(),
                          pixel_budget=self._pixel_budget, fingerprint=self._fingerprint)

    def count_tokens(self, text: str) -> int:
        if self._counter is None:
            return super().count_tokens(text)
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    # --- generation --------------------------------------------------------------------------------
    async def generate(self, batch: Sequence[EngineRequest]) -> list[EngineResult | VQAError]:
        if self._model is None:
            raise EngineFailure("the model is not loaded yet; retry in a moment", retry_after=5)
        return await self.generate_streams(batch, [None] * len(batch))

    async def generate_streams(self, batch: Sequence[EngineRequest],
                               sinks: Sequence[DeltaSink | None]) -> list[EngineResult | VQAError]:
        """One batched generate per group; streaming rows get their text as it is decoded."""
        if self._model is None:
            raise EngineFailure("the model is not loaded yet; retry in a moment", retry_after=5)
        loop = asyncio.get_running_loop()
        for request in batch:
            request.adapter = self.adapter_table.resolve(request.adapter)
        hop = LoopHop(loop)
        feeds: list[RowFeed | None] = [None if sink is None else RowText(r.params, sink).feed(hop)
                                        for r, sink in zip(batch, sinks, strict=True)]
        # The feeds' callbacks are queued before the result's, so every delta lands before it.
        return await loop.run_in_executor(self._executor, self._generate_all, list(batch), feeds)

    def _generate_all(self, batch: list[EngineRequest],
                      feeds: list[RowFeed | None]) -> list[EngineResult | VQAError]:
        results: list[EngineResult | VQAError | None] = [None] * len(batch)
        for group in split_groups(batch):
            members = [batch[i] for i in group]
            for i, result in zip(group, self._run_isolated(members, [feeds[i] for i in group]), strict=True):
                results[i] = result
        return [r if r is not None else EngineFailure("no result") for r in results]

    def _run_isolated(self, members: list[EngineRequest],
                      feeds: list[RowFeed | None]) -> list[EngineResult | VQAError]:
        """One batched pass; if it fails, each member alone, so one bad request fails alone.
        (A streaming row re-run alone re-sends its text from the start; RowText sends only new text.)"""
        try:
            return self._generate_group(members, feeds)
        except VQAError as exc:
            if len(members) == 1:
                return [exc]
        except Exception as exc:  # noqa: BLE001 - turned into a per-request EngineFailure below
            if len(members) == 1:
                return [self._failure(exc, members[0])]
            log.warning("batch of %d failed (%s); retrying one by one", len(members), type(exc).__name__)
            self._free_memory()
        out: list[EngineResult | VQAError] = []
        for member, feed in zip(members, feeds, strict=True):
            out.extend(self._run_isolated([member], [feed]))
        return out

    def _failure(self, exc: BaseException, request: EngineRequest) -> EngineFailure:

        if _is_oom(exc):
            self._free_memory()
            return EngineFailure("out of memory while answering; retry with fewer or smaller images or "
                                 "a shorter max_tokens", retry_after=2)
        log.exception("generation failed for request %s", request.request_id, exc_info=exc)
        return EngineFailure("the engine failed on this request; retry", retry_after=1)

    def _free_memory(self) -> None:
        import torch

        if self.vision_memo is not None:  # remembered features give way to the next answer
            self.vision_memo.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _prepare(self, members: list[EngineRequest]) -> Any:
        processor = self._processor
        prompts, images = [], []
        for request in members:
            messages, imgs = to_messages(request, self._control_tokens)
            prompts.append(processor.apply_chat_template(messages, tokenize=False,
                                                         add_generation_prompt=True))
            images.extend(imgs)
        factor = 32
        aligned = all(im.width % factor == 0 and im.height % factor == 0 for im in images)
        kwargs: dict[str, Any] = {"do_resize": not aligned} if images else {}
        inputs = processor(text=prompts, images=images or None, return_tensors="pt", padding=True, **kwargs)
        self._picture_ids = picture_ids(members, kwargs)  # the vision memo's keys, in image order
        inputs = inputs.to(self._model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        return inputs

    def _generate_group(self, members: list[EngineRequest],
                        feeds: list[RowFeed | None]) -> list[EngineResult | VQAError]:
        """Generate for requests sharing adapter and sampling settings (runs on the worker thread)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        early = [self._early_error(r) for r in members]
        live = [r for r, e in zip(members, early, strict=True) if e is None]
        feeds = [f for f, e in zip(feeds, early, strict=True) if e is None]
        if not live:
            return [e for e in early if e is not None]
        inputs = self._prepare(live)
        prompt_len = int(inputs["input_ids"].shape[1])
        params = live[0].params
        max_new = max(r.params.max_new_tokens for r in live)
        gen_config = generation_kwargs(self._model.generation_config, params, max_new)
        eos = gen_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        tokenizer = self._processor.tokenizer
        rows = [RowState(r.params.max_new_tokens, tuple(r.params.stop), r) for r in live]
        stopper = RowStopper(rows, prompt_len, eos_ids,
                             lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        if params.seed is not None and not params.greedy:
            torch.manual_seed(params.seed)
        streamer = RowStreamer(rows, feeds, stopper.decode) if any(feeds) else None
        grammar = self._grammars.processor([r.params.json_schema for r in live]) if self._grammars else None
        # The recorder sees the grammar's mask and nothing later (token_logprobs.py says why).
        recorder = TokenLogprobs(max(r.params.logprobs or 0 for r in live))
        processors = [*([grammar] if grammar else []), recorder, *penalty_processors(
            self._model.generation_config, params, prompt_len, inputs["attention_mask"], sorted(eos_ids))]
        with (torch.inference_mode(), self._peft.context(self._model, live[0].adapter),
              serving(self.vision_memo, self._peft.peft_name(live[0].adapter), self._picture_ids)):
            out = self._model.generate(**inputs, generation_config=gen_config, streamer=streamer,
                                       stopping_criteria=StoppingCriteriaList([stopper]),
                                       logits_processor=LogitsProcessorList(processors))
        stopper.finish(int(out.shape[1]) - prompt_len)
        recorder.finish(out)
        results = iter(self._row_result(row, out[i, prompt_len:], inputs["attention_mask"][i], recorder, i, eos_ids)
                       for i, row in enumerate(rows))
        return [e if e is not None else next(results) for e in early]

    def _early_error(self, request: EngineRequest) -> VQAError | None:
        if request.adapter is not None and not self._peft.has(request.adapter):
            return NotFound(f"adapter {request.adapter.split('@')[0]!r} is not loaded; GET /v1/models lists the "
                            "served models", param="model")
        refused = self._grammars.refusal(request.params.json_schema) if self._grammars else None
        if refused is not None:  # a schema the decoder cannot enforce fails alone, not its batch
            return refused
        return self._stopped_error(request) if request.should_stop() else None

    @staticmethod
    def _stopped_error(request: EngineRequest) -> VQAError:
        if request.deadline is not None and not request.cancel.is_set():
            return DeadlineExceeded()
        return EngineFailure("generation cancelled: the client went away", code="cancelled")

    def _row_result(self, row: RowState, new_ids: Any, attention: Any, recorder: TokenLogprobs, index: int,
                    eos_ids: set[int]) -> EngineResult | VQAError:
        done = row.done_at if row.done_at is not None else len(new_ids)
        ids = new_ids[:done].tolist()
        self._record(row.request.request_id, len(ids))
        if row.cancelled:
            return self._stopped_error(row.request)
        tokenizer = self._processor.tokenizer
        text, reason = finish_text(lambda t: tokenizer.decode(t, skip_special_tokens=True), ids, row)
        ended = row.reason == "stop" and bool(ids) and ids[-1] in eos_ids
        assert self._token_names is not None  # set with the model
        conf, logprobs = recorder.result(index, ids, ended, row.request.params.logprobs, self._token_names.name)
        return EngineResult(text=text, finish_reason=reason, confidence=conf, logprobs=logprobs,
                            usage=Usage(prompt_tokens=int(attention.sum()), completion_tokens=len(ids)))

    def _record(self, request_id: str, n: int) -> None:
        self.generated_tokens[request_id] = n
        while len(self.generated_tokens) > 1024:
            self.generated_tokens.popitem(last=False)

    # --- streaming ---------------------------------------------------------------------------------
    async def stream(self, request: EngineRequest) -> AsyncGenerator[StreamDelta, None]:
        """One streaming row (the batcher streams rows together through generate_streams)."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.ensure_future(self.generate_streams([request], [queue.put_nowait]))
        sent = 0
        getter: asyncio.Future[str] | None = None
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    piece = getter.result()
                    sent += len(piece)
                    yield StreamDelta(text=piece)
                else:
                    getter.cancel()
            (result,) = task.result()
        finally:
            if getter is not None:
                getter.cancel()
            if not task.done():  # the consumer went away: stop generating, wait for the worker
                request.cancel.set()
                await asyncio.wait([task])
        if isinstance(result, VQAError):
            raise result
        yield StreamDelta(text=result.text[sent:], finish_reason=result.finish_reason, usage=result.usage,
                          confidence=result.confidence, logprobs=result.logprobs)
