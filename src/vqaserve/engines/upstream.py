"""Any OpenAI-compatible model server (vLLM, SGLang, LMDeploy) as the engine behind the gateway.

The gateway keeps what the model server lacks (image checks and normalization, safety, the answer
cache, adapters by name, metrics); the model server does the batching and the GPUs. So `generate`
sends each request of a batch on its own, concurrently: the upstream's continuous batching beats any
batching we could do in front of it.

Failure handling, in order: connect errors are retried with exponential backoff (bounded: the request
never arrived, so a retry is safe); any other upstream error is mapped once to our error tree
(upstream_wire.map_status); consecutive failures open a circuit breaker that fails fast and shows in
/ready. Cancelling a request (client gone, deadline passed) closes its upstream connection, which is
how vLLM learns to abort the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any

import httpx

from vqaserve.breaker import BreakerOpen, Call, CircuitBreaker
from vqaserve.engines.adapters import AdapterVersion
from vqaserve.engines.base import Engine, EngineInfo
from vqaserve.engines.upstream_lora import UpstreamAdapters
from vqaserve.engines.upstream_wire import (
    ImageEncoder,
    answer_confidence,
    build_body,
    build_messages,
    finish_reason,
    map_status,
    parse_logprobs,
    parse_sse_line,
    parse_usage,
    upstream_message,
)
from vqaserve.errors import ConfigError, DeadlineExceeded, EngineFailure, VQAError
from vqaserve.settings import Settings
from vqaserve.types import EngineRequest, EngineResult, StreamDelta, TokenLogprob, Usage

log = logging.getLogger("vqaserve.upstream")

PROBE_INTERVAL_S = 1.0  # /ready probes of the upstream are cached this long (load balancers poll often)
MAX_BACKOFF_S = 2.0
DISCOVERY_MAX_DELAY_S = 5.0  # background retries of a model server that was not up at start-up


def api_base(url: str) -> str:
    """`http://host:8000` or `http://host:8000/v1` -> `http://host:8000/v1/` (the OpenAI API root)."""
    try:
        parsed = httpx.URL(url.strip())
    except Exception:  # noqa: BLE001 - httpx raises several kinds for junk
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("VQA_UPSTREAM_URL must be an http(s) URL of an OpenAI-compatible server, "
                          "e.g. http://127.0.0.1:8001/v1")
    path = parsed.path.rstrip("/")
    return str(parsed.copy_with(path=(path or "/v1") + "/", query=None, fragment=None))


class UpstreamUnreachable(EngineFailure):
    code = "upstream_unreachable"


class UpstreamEngine(Engine):
    name = "upstream"
    batches_itself = True  # wiring gives it a ConcurrencyGate (gate.py), not the micro-batcher

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        llm = settings.llm
        if not llm.upstream_url:
            raise ConfigError("--engine upstream needs --upstream-url (VQA_UPSTREAM_URL), "
                              "e.g. http://127.0.0.1:8001/v1")
        self.settings = settings
        self.base_url = api_base(llm.upstream_url)
        self.model_name: str | None = llm.upstream_model
        self.max_context = 0
        # Adapters by public name -> the names the model server serves their versions under.
        self.lora = UpstreamAdapters(self._http, llm.upstream_timeout_s, llm.adapters)
        self._adapter_table = self.lora.table
        self.encoder = ImageEncoder(llm.upstream_image_format)
        self.breaker = CircuitBreaker(max(1, llm.upstream_breaker_failures), llm.upstream_breaker_reset_s,
                                      name="upstream")
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._discover_lock = asyncio.Lock()
        self._probe: tuple[float, bool] = (-1e9, False)
        self._discovery: asyncio.Task[None] | None = None
        self._waiting_reason: str | None = None  # set while the model server has not been reached yet

    # --- lifecycle ---------------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            llm = self.settings.llm
            headers = {"Authorization": f"Bearer {llm.upstream_api_key}"} if llm.upstream_api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=headers, transport=self._transport,
                timeout=httpx.Timeout(llm.upstream_timeout_s, connect=min(5.0, llm.upstream_timeout_s)),
                limits=httpx.Limits(max_connections=max(64, self.settings.server.max_connections),
                                    max_keepalive_connections=64))
        return self._client

    async def start(self) -> None:
        """Learn the model name (and context length) from /v1/models. A model server that is not up
        yet is not fatal: vLLM takes minutes to load a real model, and start order must not matter.
        The gateway serves /health at once, /ready says 503 with the reason, and discovery retries in
        the background until the model server answers."""
        try:
            await self._discover()
        except VQAError as exc:
            self._waiting_reason = exc.message
            log.warning("model server not ready at start-up (%s); retrying in the background", exc.message)
            self._discovery = asyncio.create_task(self._discover_until_up(), name="upstream-discovery")

    async def _discover_until_up(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await self._discover()
            except VQAError as exc:
                self._waiting_reason = exc.message
                delay = min(delay * 2, DISCOVERY_MAX_DELAY_S)
                continue
            self._waiting_reason = None
            log.info("model server is up: serving %s", self.model_name)
            return

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery
            self._discovery = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def info(self) -> EngineInfo:
        # No pixel budget of its own: the gateway's settings are the budget, and docs/deploy.md
        # gives vLLM the same one (--mm-processor-kwargs), so neither resizes what the other sent.
        return EngineInfo(model_id=self.model_name or "upstream", dtype="n/a", device="upstream",
                          max_context=self.max_context, adapters=self.adapters())

    def breakers(self) -> dict[str, CircuitBreaker]:
        return {"upstream": self.breaker}

    async def health(self) -> dict[str, object]:
        """For /ready: a cached probe of the upstream plus the breaker. Never names the upstream URL."""
        now = time.monotonic()
        if now - self._probe[0] >= PROBE_INTERVAL_S and self.breaker.state != "open":
            self._probe = (now, await self._probe_once())
        reachable = self._probe[1] and self.breaker.state != "open"  # open: the last calls failed
        state: dict[str, object] = {"ok": reachable and self.model_name is not None, "engine": "upstream",
                                    "upstream_reachable": reachable, "model": self.model_name,
                                    "breaker": self.breaker.snapshot()}
        if self._waiting_reason is not None:
            state["reason"] = f"waiting for the model server: {self._waiting_reason}"
        return state

    async def _probe_once(self) -> bool:
        try:
            with self.breaker.guard(failures=()) as call:
                try:
                    resp = await self._http().get("models", timeout=2.0)
                except httpx.HTTPError as exc:
                    call.fail(f"probe: {type(exc).__name__}")
                    return False
                if resp.status_code >= 500:
                    call.fail(f"probe: HTTP {resp.status_code}")
                    return False
                call.succeed()
                return resp.status_code == 200
        except BreakerOpen:
            return False

    async def _discover(self) -> None:
        async with self._discover_lock:
            with self._guard() as call:
                resp = await self._send(call, "GET", "models", None, self._timeout(None), None)
                raw = await _read_close(resp)
                self._judge(call, resp.status_code)
            if resp.status_code != 200:
                raise map_status(resp.status_code, raw, resp.headers, self.model_name or "")
            try:
                entries = json.loads(raw).get("data") or []
            except (ValueError, AttributeError):
                entries = []
            ids = [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
            if not ids:
                raise EngineFailure("the model server lists no models; set VQA_UPSTREAM_MODEL")
            bases = [e for e in ids if not e.get("parent")] or ids
            chosen = next((e for e in ids if e["id"] == self.model_name), bases[0])
            self.model_name = self.model_name or chosen["id"]
            self.max_context = int(chosen.get("max_model_len") or 0)
            self.lora.discovered(ids, self.model_name)

    async def adapter_version(self, name: str, path: str) -> AdapterVersion:
        return await self.lora.version(name, path)

    # --- requests ----------------------------------------------------------------------------------
    def _upstream_model(self, adapter: str | None) -> str:
        if adapter is None:
            assert self.model_name is not None
            return self.model_name
        return self.lora.upstream_name(adapter)

    def _timeout(self, request: EngineRequest | None) -> float:
        timeout = self.settings.llm.upstream_timeout_s
        if request is not None and request.deadline is not None:
            timeout = min(timeout, max(0.001, request.deadline - time.monotonic()))
        return timeout

    async def _send(self, call: Call, method: str, path: str, body: dict[str, Any] | None, timeout: float,
                    deadline: float | None) -> httpx.Response:
        """One request with bounded connect retries; returns the response with its body unread."""
        client = self._http()
        attempts = 1 + max(0, self.settings.llm.upstream_retries)
        delay = 0.1
        for attempt in range(attempts):
            request = client.build_request(method, path, json=body, timeout=timeout)
            try:
                return await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                late = deadline is not None and time.monotonic() + delay >= deadline
                if attempt == attempts - 1 or late:
                    call.fail(f"connect: {type(exc).__name__}")
                    raise UpstreamUnreachable("the model server is unreachable; retry shortly",
                                              retry_after=self.breaker.retry_after() or 1.0) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _prepared(self, request: EngineRequest, stream: bool) -> tuple[dict[str, Any], str]:
        if self.model_name is None:
            await self._discover()
        model = self._upstream_model(request.adapter)
        send_uuid = self.settings.llm.upstream_send_uuid
        if all(self.encoder.ready(image) for image in request.images):
            # Nothing to encode (files forwarded as sent, or encoded before): a thread hop would cost
            # more than the work.
            messages = build_messages(request, self.encoder, send_uuid)
        else:  # encoding a photo is ~10 ms of CPU: off the event loop
            messages = await asyncio.to_thread(build_messages, request, self.encoder, send_uuid)
        return build_body(request, model, messages, stream), model

    @contextlib.contextmanager
    def _guard(self) -> Iterator[Call]:
        """One call to the model server through the breaker. Every verdict is given explicitly
        (`_judge`, `_timed_out`, connect failures in `_send`); anything else, a cancellation above
        all, says nothing about the server."""
        try:
            with self.breaker.guard(failures=()) as call:
                yield call
        except BreakerOpen as exc:
            raise EngineFailure("the model server is failing; this gateway paused sending to it, retry in "
                                f"{exc.retry_after:.0f} s", retry_after=exc.retry_after) from None

    @staticmethod
    def _judge(call: Call, status: int) -> None:
        """5xx and 401/403 mean a sick upstream; other answers mean it is alive."""
        if status >= 500 or status in (401, 403):
            call.fail(f"HTTP {status}")
        else:
            call.succeed()

    def _timed_out(self, timeout: float, fail: Callable[[str], None]) -> DeadlineExceeded:
        if timeout >= self.settings.llm.upstream_timeout_s:  # the server hung, not a short deadline
            fail("timeout")
        return DeadlineExceeded(f"the model server did not answer within {timeout:.1f} s; retry, or raise "
                                "VQA_REQUEST_TIMEOUT_S / VQA_UPSTREAM_TIMEOUT_S")

    async def _complete(self, request: EngineRequest) -> EngineResult:
        body, model = await self._prepared(request, stream=False)
        timeout = self._timeout(request)
        with self._guard() as call:
            try:
                resp = await self._send(call, "POST", "chat/completions", body, timeout, request.deadline)
                raw = await _read_close(resp)
            except httpx.TimeoutException:
                raise self._timed_out(timeout, call.fail) from None
            except httpx.TransportError as exc:
                call.fail(type(exc).__name__)
                raise EngineFailure("the model server dropped the connection; retry", retry_after=1.0) from None
            self._judge(call, resp.status_code)
        if resp.status_code != 200:
            raise map_status(resp.status_code, raw, resp.headers, model)
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise EngineFailure("the model server sent an answer we could not read; retry") from None
        usage = parse_usage(data.get("usage")) or Usage(completion_tokens=self.count_tokens(text))
        finish, tokens = finish_reason(choice.get("finish_reason")), parse_logprobs(choice.get("logprobs"))
        return EngineResult(text=text, finish_reason=finish, usage=usage,
                            confidence=answer_confidence(tokens, finish, choice.get("stop_reason")),
                            logprobs=(tokens or None) if request.params.logprobs is not None else None)

    async def _one(self, request: EngineRequest) -> EngineResult | VQAError:
        """One request, watched without polling: its stop signal, a client that leaves or a deadline
        (the gate's wait_for) cancels the upstream call, which closes the connection, and that is how
        vLLM learns to abort. The HTTP timeout is already capped at the deadline."""
        call = asyncio.ensure_future(self._complete(request))
        stop = asyncio.ensure_future(request.cancel.wait_set())
        try:
            await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
            if call.done():
                return call.result()
            call.cancel()  # its breaker guard sees the cancellation: no verdict on the upstream
            return DeadlineExceeded() if request.past_deadline() else EngineFailure("generation stopped")
        except VQAError as exc:
            return exc
        except Exception:  # noqa: BLE001 - one request's surprise must not fail its batch
            log.exception("upstream request failed unexpectedly")
            return EngineFailure("the model server request failed; retry")
        finally:
            stop.cancel()
            if not call.done():  # we were cancelled ourselves (client gone): close the upstream call
                call.cancel()

    async def generate(self, batch: Sequence[EngineRequest]) -> list[EngineResult | VQAError]:
        return list(await asyncio.gather(*(self._one(r) for r in batch)))

    async def stream(self, request: EngineRequest) -> AsyncGenerator[StreamDelta, None]:
        """Relay the upstream's SSE chunks one by one; the last delta carries finish reason and usage."""
        body, model = await self._prepared(request, stream=True)
        timeout = self._timeout(request)
        with self._guard() as call:  # until the status line: the stream's own faults are judged below
            try:
                resp = await self._send(call, "POST", "chat/completions", body, timeout, request.deadline)
            except httpx.TimeoutException:
                raise self._timed_out(timeout, call.fail) from None
            self._judge(call, resp.status_code)
        try:
            if resp.status_code != 200:
                raw = await resp.aread()
                raise map_status(resp.status_code, raw, resp.headers, model)
            async for delta in self._relay(resp, request):
                yield delta
        except httpx.TimeoutException:  # hung mid-answer: a fault after the call's verdict
            raise self._timed_out(timeout, self.breaker.record_failure) from None
        except httpx.TransportError:
            # The server answered (a success above) and then broke off: a fault after the call's
            # verdict, reported as one of its own.
            self.breaker.record_failure("stream broken")
            raise EngineFailure("the model server broke off the answer; retry", retry_after=1.0) from None
        finally:
            await resp.aclose()  # unread: the connection closes and vLLM aborts the generation

    async def _relay(self, resp: httpx.Response, request: EngineRequest) -> AsyncGenerator[StreamDelta, None]:
        finish: str | None = None
        tail = ""
        usage: Usage | None = None
        done = False
        tokens: list[TokenLogprob] = []  # every chunk's; the last delta carries them all
        stop_reason: object = None
        async for line in resp.aiter_lines():
            if request.should_stop():
                # Never a silent end: the client would read a cut answer as a complete one.
                raise DeadlineExceeded() if request.past_deadline() else EngineFailure("generation stopped")
            chunk = parse_sse_line(line)
            if chunk is None:
                continue
            if chunk == "[DONE]":
                done = True
                break
            assert isinstance(chunk, dict)
            if "error" in chunk:  # vLLM reports a failure after the 200 as an error chunk
                self.breaker.record_failure("error chunk")
                detail = upstream_message(json.dumps(chunk).encode())
                raise EngineFailure(f"the model server failed mid-answer: {detail}; retry", retry_after=1.0)
            usage = parse_usage(chunk.get("usage")) or usage
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                tokens.extend(parse_logprobs(choice.get("logprobs")) or ())
                if choice.get("finish_reason") is not None:
                    finish, stop_reason = choice["finish_reason"], choice.get("stop_reason")
                    tail += text
                elif text:
                    yield StreamDelta(text=text)
        if finish is None and not done:
            raise EngineFailure("the model server ended the answer early; retry", retry_after=1.0)
        reason = finish_reason(finish)
        yield StreamDelta(text=tail, finish_reason=reason, usage=usage or Usage(completion_tokens=0),
                          confidence=answer_confidence(tokens, reason, stop_reason),
                          logprobs=(tokens or None) if request.params.logprobs is not None else None)


async def _read_close(resp: httpx.Response) -> bytes:
    try:
        return await resp.aread()
    finally:
        await resp.aclose()
