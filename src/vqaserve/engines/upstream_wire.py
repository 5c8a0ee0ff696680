"""What travels between the gateway and an OpenAI-compatible model server (vLLM, SGLang, LMDeploy).

Requests: every image goes already decoded, checked and fitted to the pixel budget, as a `data:` URI,
so the model server never fetches a URL and never decodes a huge or hostile file. Graphics (few
colours) travel as PNG, which is lossless and small for them; photos as JPEG quality 95, typically 3-5x
smaller than PNG at that size and visually identical to the model (set VQA_LLM__UPSTREAM_IMAGE_FORMAT
to `png` for bit-exact pixels). Each image part carries vLLM's optional `uuid`: our content hash, so
vLLM's multimodal processor cache hits for a photo it has seen, without hashing the pixels again.

Responses: usage, finish reason and text come from the server; its HTTP errors become our error tree.
Every request asks for logprobs (top_logprobs: the client's, else 0), so every answer gets its
confidence (confidence.py) from the server's own log-probabilities (vLLM's default raw_logprobs: the
distribution the in-process engine records too); the client sees them only if it asked.
"""

from __future__ import annotations

import email.utils
import io
import json
import re
import time
from typing import Any

from vqaserve import confidence
from vqaserve.bounded_lru import BoundedLRU
from vqaserve.engines.structured import response_format_body
from vqaserve.errors import (
    EngineFailure,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    VQAError,
)
from vqaserve.images import decode
from vqaserve.types import EngineRequest, FinishReason, NormalizedImage, TokenLogprob, Usage

PHOTO_COLOURS = 4096  # more distinct colours than this (on a thumbnail) -> treat as a photo -> JPEG
JPEG_QUALITY = 95
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "content_filter": "content_filter"}
# Upstream error text goes to our clients: strip what could reveal the server's insides.
_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_SOURCE = re.compile(r"\b[\w.-]+\.py\b")
_URL = re.compile(r"\bhttps?://\S+")


class ImageEncoder:
    """Normalized image -> data URI, with a small LRU so a popular photo is encoded once."""

    def __init__(self, fmt: str = "auto", capacity: int = 128) -> None:
        self.fmt = fmt
        self._cache: BoundedLRU[str, str] = BoundedLRU(capacity)

    def choose_format(self, image: NormalizedImage) -> str:
        if self.fmt in ("png", "jpeg"):
            return self.fmt
        # Counting colours is cheaper than making a thumbnail up to ~256x256 pixels.
        thumb = image.image if image.width * image.height <= 256 * 256 else image.image.resize((128, 128))
        return "png" if thumb.getcolors(maxcolors=PHOTO_COLOURS) is not None else "jpeg"

    def _forwards(self, image: NormalizedImage) -> bool:
        return image.encoded is not None and self.fmt in ("auto", image.encoded[0].removeprefix("image/"))

    def ready(self, image: NormalizedImage) -> bool:
        """True when `data_uri` has nothing to encode (cheap enough for the event loop)."""
        if self._forwards(image):
            return True
        return f"{self.fmt}:{image.content_hash}" in self._cache

    def data_uri(self, image: NormalizedImage) -> str:
        key = f"{self.fmt}:{image.content_hash}"
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if image.encoded is not None and self._forwards(image):
            # The client's file already carries exactly these pixels: no encoding, no cache entry.
            mime, data = image.encoded
            return decode.data_uri(data, mime)
        fmt = self.choose_format(image)
        buf = io.BytesIO()
        if fmt == "png":
            image.image.save(buf, format="PNG", compress_level=1)  # speed over the last few % of size
        else:
            image.image.save(buf, format="JPEG", quality=JPEG_QUALITY)
        uri = decode.data_uri(buf.getvalue(), f"image/{fmt}")
        self._cache.put(key, uri)
        return uri


def build_messages(request: EngineRequest, encoder: ImageEncoder, send_uuid: bool) -> list[dict[str, Any]]:
    """Our turns -> OpenAI chat messages; text-only turns as plain strings (the most compatible form)."""
    messages: list[dict[str, Any]] = []
    for turn in request.turns:
        if not any(p.image is not None for p in turn.parts):
            messages.append({"role": turn.role, "content": turn.text})
            continue
        content: list[dict[str, Any]] = []
        for part in turn.parts:
            if part.image is not None:
                item: dict[str, Any] = {"type": "image_url",
                                        "image_url": {"url": encoder.data_uri(part.image)}}
                if send_uuid:
                    item["uuid"] = part.image.content_hash
                content.append(item)
            elif part.text:
                content.append({"type": "text", "text": part.text})
        messages.append({"role": turn.role, "content": content})
    return messages


def build_body(request: EngineRequest, model: str, messages: list[dict[str, Any]],
               stream: bool) -> dict[str, Any]:
    """Generation params -> OpenAI fields; top_k is not OpenAI's but vLLM/SGLang/LMDeploy accept it.

    vLLM's other extensions (min_tokens, ignore_eos, ...) go only when a client set them, so a
    server that refuses unknown fields still gets a plain OpenAI body for ordinary requests.
    """
    p = request.params
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": p.max_new_tokens,
                            "temperature": p.temperature, "top_p": p.top_p, "stream": stream}
    if p.top_k > 0:
        body["top_k"] = p.top_k
    if p.seed is not None:
        body["seed"] = p.seed
    if p.stop:
        body["stop"] = list(p.stop)
    for name, value in p.extensions().items():
        body[name] = list(value) if isinstance(value, tuple) else value
    if p.json_schema:  # OpenAI's shape, which vLLM enforces with its structured-output backend
        body["response_format"] = response_format_body(p.json_schema)
    if stream:
        body["stream_options"] = {"include_usage": True}
    body["logprobs"] = True  # for the confidence, asked or not (the chosen tokens' only: cheap)
    body["top_logprobs"] = p.logprobs or 0
    return body


def parse_logprobs(value: object) -> list[TokenLogprob] | None:
    """A choice's (or chunk's) `logprobs` in OpenAI's shape -> our tokens; None if absent or unreadable."""
    content = value.get("content") if isinstance(value, dict) else None
    if not isinstance(content, list):
        return None
    try:
        return [_token(entry, tuple(_token(alt) for alt in entry.get("top_logprobs") or ())) for entry in content]
    except (TypeError, ValueError, AttributeError, KeyError):
        return None


def _token(entry: Any, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
    raw = entry.get("bytes")
    return TokenLogprob(token=str(entry["token"]), logprob=float(entry["logprob"]),
                        bytes=tuple(int(b) for b in raw) if isinstance(raw, list) else None, top=top)


def answer_confidence(tokens: list[TokenLogprob] | None, finish: FinishReason, stop_reason: object) -> float | None:
    """confidence.py's rule over the server's tokens. vLLM's last token is the end token when the answer
    stopped on EOS (stop_reason null) or a stop_token_id (an int); a stop string (a str) is text."""
    if not tokens:
        return None
    ended = finish == "stop" and not isinstance(stop_reason, str)
    return confidence.of_answer([t.logprob for t in tokens], ended)


def finish_reason(value: object) -> FinishReason:
    return _FINISH.get(str(value), "stop")


def parse_usage(data: object) -> Usage | None:
    if not isinstance(data, dict):
        return None
    try:
        return Usage(prompt_tokens=int(data.get("prompt_tokens") or 0),
                     completion_tokens=int(data.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return None


def retry_after(headers: Any, default: float | None = None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or `default`."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def scrub(message: str, limit: int = 300) -> str:
    """Upstream error text, safe to show a client: no paths, URLs or memory addresses, bounded."""
    message = _URL.sub("<url>", message)
    message = _PATHLIKE.sub("<path>", message)
    message = _ADDRESS.sub("<addr>", message)
    message = _SOURCE.sub("<source>", message)
    message = " ".join(message.split())
    return message[:limit] + ("..." if len(message) > limit else "")


def upstream_message(body: bytes) -> str:
    """The human message out of an OpenAI-style (or FastAPI-style) error body."""
    try:
        data = json.loads(body)
    except ValueError:
        return scrub(body.decode("utf-8", "replace"))
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or ""
            return scrub(msg if isinstance(msg, str) else json.dumps(msg))
        if isinstance(err, str):
            return scrub(err)
    return scrub(str(data))


def map_status(status: int, body: bytes, headers: Any, model: str) -> VQAError:
    """An upstream HTTP error -> our error tree (statuses documented in docs/deploy.md)."""
    detail = upstream_message(body) or f"HTTP {status}"
    if status == 404:
        return NotFound(f"the model server does not serve {model!r}; check VQA_UPSTREAM_MODEL and the "
                        f"adapter mapping (vLLM --lora-modules) ({detail})", param="model")
    if status in (401, 403):
        # Our credentials, not the client's: an operator problem, so a 503, never a 4xx to the client.
        return EngineFailure("the model server refused the gateway's credentials; the operator must fix "
                             "VQA_UPSTREAM_API_KEY", retry_after=retry_after(headers, 30.0))
    if status == 413:
        return PayloadTooLarge(f"the model server refused the request as too large: {detail}; "
                               "send fewer or smaller images")
    if status == 429:
        return Overloaded(f"the model server is busy: {detail}; retry shortly",
                          retry_after=retry_after(headers, 1.0))
    if status == 503:
        return EngineFailure(f"the model server is unavailable: {detail}; retry shortly",
                             retry_after=retry_after(headers, 1.0))
    if 400 <= status < 500:
        return InvalidRequest(f"the model server refused the request: {detail}")
    return EngineFailure(f"the model server failed (HTTP {status}): {detail}; retry",
                         retry_after=retry_after(headers, None))


def parse_sse_line(line: str) -> dict[str, Any] | None | str:
    """One SSE line -> a JSON chunk, "[DONE]", or None for comments, blanks and other fields."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return "[DONE]"
    if not payload:
        return None
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise EngineFailure("the model server sent a malformed stream chunk; retry") from None
    return chunk if isinstance(chunk, dict) else None
