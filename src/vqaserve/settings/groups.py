"""The settings groups: one pydantic model per part of the service, each field with its default,
its description (its row in docs/operations.md) and the validators that refuse unsafe values with the
fix. `vqaserve.settings` assembles them into Settings and reads the environment."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

DEFAULT_MODEL = "shop-toy"
PATCH = 32  # Qwen3-VL: patch 16 merged 2x2 -> one visual token per 32x32 pixels


def _comma_list(v: Any) -> Any:
    """`a,b` (env, flags) -> ["a", "b"]; lists pass through."""
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


# Lists and mappings are written `a,b` and `NAME=PATH,NAME=PATH` in VQA_* variables, nested names too
# (pydantic-settings would otherwise want JSON for VQA_GROUP__FIELD).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]


def parse_adapters(v: Any) -> dict[str, str]:
    """`NAME=PATH,NAME=PATH` (or a list of NAME=PATH) -> dict; clear error otherwise."""
    if isinstance(v, dict):
        return {str(k): str(p) for k, p in v.items()}
    items = _comma_list(v) or []
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = str(item).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"adapter {item!r} must look like NAME=PATH (e.g. sunglasses=./adapter)")
        out[name.strip()] = path.strip()
    return out


def _check_forwarded(v: list[str]) -> list[str]:
    import ipaddress

    for item in v:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"VQA_FORWARDED_ALLOW_IPS: {item!r} is not an IP address or network; give "
                             "the proxy's addresses, e.g. 127.0.0.1 or 172.30.0.0/24 (* trusts any)") from None
    return v


class ModelSettings(BaseModel):
    model: str = Field(default=DEFAULT_MODEL, description="model dir, hub id or bundled name")
    adapters: Annotated[dict[str, str], NoDecode, BeforeValidator(parse_adapters)] = Field(
        default_factory=dict, description="`NAME=PATH,NAME=PATH` LoRA adapters served by name")
    engine: Literal["transformers", "upstream", "scripted"] = Field(
        default="transformers", description="`transformers` (in process), `upstream` (an OpenAI-compatible server "
                                    "such as vLLM), `scripted` (tests)")
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda` or `cuda:N`")
    dtype: str = Field(default="auto", description="`auto`, `float32`, `bfloat16` or `float16`")
    trust_remote_code: bool = Field(default=False, description="run code from the model repo (operator opt-in only)")
    upstream_url: str | None = Field(default=None, description="the upstream engine server (`http://HOST:PORT/v1`)")
    upstream_model: str | None = Field(default=None, description="model name to ask the upstream server for")
    upstream_api_key: str | None = Field(default=None, description="bearer key for the upstream server")
    vision_memo_mb: int = Field(default=256, ge=0, description="MB of vision-tower output remembered per picture "
                                "(in-process engine), so follow-up questions skip the tower (0 = off)")
    upstream_timeout_s: float = Field(default=60.0, description="seconds an upstream request may take")
    upstream_retries: int = Field(default=3, description="extra attempts on connect errors only (the request never "
                                                 "arrived)")
    upstream_breaker_failures: int = Field(default=5, description="consecutive upstream failures that open the "
                                                          "circuit breaker")
    upstream_breaker_reset_s: float = Field(default=10.0, description="seconds the breaker stays open before one "
                                                              "probe is let through")
    upstream_image_format: Literal["auto", "png", "jpeg"] = Field(
        default="auto", description="how images travel upstream: `auto`, `png` or `jpeg`")
    upstream_send_uuid: bool = Field(default=True, description="send vLLM's per-image `uuid`; turn off for servers "
                                                       "that reject it")


class ImageSettings(BaseModel):
    min_pixels: int = Field(default=256 * PATCH * PATCH, description="smallest pixel budget per image (visual "
                                                             "tokens × 32×32; intersected with the model's)")
    max_pixels: int = Field(default=1280 * PATCH * PATCH, description="largest pixel budget per image; pictures are "
                                                              "scaled to fit")
    max_image_pixels: int = Field(default=64_000_000, description="decode limit: larger pictures are refused before "
                                                          "decoding (decompression bombs)")
    max_images: int = Field(default=8, description="images per request")
    max_body_bytes: int = Field(default=25 * 1024 * 1024, description="request body limit (413 above)")
    local_image_dir: str | None = Field(default=None, description="local image paths in requests only from this "
                                                          "folder (unset: none; `vqa ask` allows any)")
    decoded_memo: int = Field(default=128, ge=0, description="decoded pictures remembered by their bytes, so a "
                                                     "re-sent photo skips decoding (0 = off)")

    @model_validator(mode="after")
    def _budget(self) -> ImageSettings:
        if self.min_pixels < PATCH * PATCH:
            raise ValueError(f"VQA_MIN_PIXELS must be at least {PATCH * PATCH} (one visual token)")
        if self.max_pixels < self.min_pixels:
            raise ValueError("VQA_MAX_PIXELS must be >= VQA_MIN_PIXELS; raise VQA_MAX_PIXELS")
        if self.max_image_pixels < self.max_pixels:
            raise ValueError("VQA_MAX_IMAGE_PIXELS must be >= VQA_MAX_PIXELS")
        return self


class GenerationSettings(BaseModel):
    max_new_tokens: int = Field(default=64, description="answer length in tokens when a request names none")
    max_new_tokens_limit: int = Field(default=2048, description="the most `max_tokens` a request may ask for")
    max_question_chars: int = Field(default=4000, description="longest question text")
    temperature: float = Field(default=0.0, description="sampling temperature when a request names none (0 = greedy)")
    top_p: float = Field(default=1.0, description="nucleus sampling `top_p` when a request names none")
    top_k: int = Field(default=0, description="`top_k` when a request names none (0 = off)")
    request_timeout_s: float = Field(default=120.0, description="deadline per request (504 after)")

    @field_validator("temperature")
    @classmethod
    def _temp(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError("VQA_TEMPERATURE must be a finite number >= 0 (0 = greedy)")
        return v


class CacheSettings(BaseModel):
    size: int = Field(default=1000, description="in-process LRU entries (also bounded by bytes)")
    max_bytes: int = Field(default=64 * 1024 * 1024, description="in-process LRU bytes")
    redis_url: str | None = Field(default=None, description="enables the Redis cache level (and shared rate limits)")
    redis_prefix: str = Field(default="vqa", description="prefix of every Redis key")
    redis_ttl_s: int = Field(default=7 * 24 * 3600, description="seconds a Redis entry lives")
    redis_timeout_ms: int = Field(default=100, description="timeout of each Redis call (then: a miss, no wait)")
    redis_probe_interval_s: float = Field(default=0.5, description="first background probe after the Redis breaker "
                                                           "opens (doubles up to 5 s)")
    near_duplicates: bool = Field(default=False, description="re-encoded copies of a photo hit the cache")
    near_duplicates_max: int = Field(default=2_000, description="images the near-duplicate index remembers "
                                                        "(~28 kB each)")
    enabled: bool = Field(default=True, description="the answer cache (false: every request goes to the engine)")


class SafetySettings(BaseModel):
    image: str = Field(default="nudenet", description="`nudenet`, `off`, `hf:PATH` or `marker` (flags magenta "
                                              "images: tests, demos)")
    image_threshold: float = Field(default=0.6, description="image-checker score from which a picture is refused")
    image_threads: int = Field(default=1, description="onnxruntime threads for the NudeNet check (the engine owns "
                                              "the other cores)")
    unsafe_labels: CommaList = Field(default_factory=list, description="comma-separated labels that count "
                                                                       "as unsafe (empty: the checker's own)")
    blocklist: str | None = Field(default=None, description="output blocklist file, one term a line (unset: the "
                                                    "bundled list)")
    refusal_en: str = Field(default="Sorry, I can't help with that.", description="the refusal for English questions")
    refusal_zh: str = Field(default="抱歉，我无法回答这个问题。", description="the refusal for Chinese questions")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v not in ("nudenet", "off", "marker") and not v.startswith("hf:"):
            raise ValueError("VQA_SAFETY_IMAGE must be 'nudenet', 'off', 'marker' or 'hf:<model dir>'")
        return v


class FetchSettings(BaseModel):
    allow_private: bool = Field(default=False, description="let the URL fetcher reach private and loopback addresses")
    allow_hosts: CommaList = Field(default_factory=list, description="comma-separated on-prem hosts the "
                                                                     "fetcher may reach")
    timeout_s: float = Field(default=5.0, description="seconds per image fetch")
    max_bytes: int = Field(default=20 * 1024 * 1024, description="largest fetched image")
    max_redirects: int = Field(default=3, description="redirects followed (each hop re-checked)")


class BatchSettings(BaseModel):
    max_size: int = Field(default=16, description="requests per engine batch (1 = no batching)")
    max_wait_ms: float = Field(default=10.0, description="how long a batch waits to fill")
    queue_max: int = Field(default=256, description="requests waiting for the engine; a full queue answers 429")
    max_visual_tokens: int = Field(default=16384, description="visual tokens per batch, for fairness (one request "
                                                      "alone may exceed it)")
    adaptive_wait: bool = Field(default=True, description="skip the wait while traffic is serial (it only adds "
                                                  "latency at concurrency 1)")

    @field_validator("max_size", "queue_max", "max_visual_tokens")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("VQA_BATCH_MAX_SIZE, VQA_QUEUE_MAX and VQA_BATCH_MAX_VISUAL_TOKENS must be >= 1")
        return v


class ServerSettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="address `vqa serve` listens on")
    port: int = Field(default=8000, description="port `vqa serve` listens on")
    workers: int = Field(default=1, description="worker processes (only for engines that hold no model)")
    api_keys: CommaList = Field(default_factory=list, description="comma-separated keys; when set, a key is "
                                                                  "needed on all routes but the probes `/health` and "
                                                                  "`/ready`")
    api_keys_file: str | None = Field(default=None, description="file of keys, one a line (merged with the above)")
    admin_keys: CommaList = Field(default_factory=list, description="comma-separated keys of the admin API "
                                  "(`/admin/...`: loading adapters, canary routes); unset: the admin API is off")
    admin_keys_file: str | None = Field(default=None, description="file of admin keys, one a line (merged with "
                                                          "the above)")
    public_web_page: bool = Field(default=True, description="the page at `/` needs no key (its API calls still do)")
    rate_limit_rpm: int = Field(default=0, description="requests per minute per key (0 = off)")
    rate_limit_ipm: int = Field(default=0, description="images per minute per key (0 = off)")
    shutdown_grace_s: float = Field(default=30.0, description="time in-flight requests get after SIGTERM")
    max_connections: int = Field(default=256, description="open connections/requests above which new ones get 503")
    header_timeout_s: float = Field(default=10.0, description="a request head must arrive whole within this "
                                                      "(slowloris)")
    body_timeout_s: float = Field(default=120.0, description="the whole body must arrive within this after the head")
    forwarded_allow_ips: Annotated[list[str], NoDecode, BeforeValidator(_comma_list),
                                   AfterValidator(_check_forwarded)] = Field(
        default_factory=list, description="proxies whose `X-Forwarded-For` names the client (addresses or "
                                          "networks, comma-separated; empty: none, `*`: any)")
    log_json: bool = Field(default=True, description="log lines are bare JSON documents (false: time and level "
                                             "prefix)")

    @field_validator("shutdown_grace_s", "header_timeout_s", "body_timeout_s")
    @classmethod
    def _seconds(cls, v: float, info: ValidationInfo) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"VQA_{str(info.field_name).upper()} must be a number of seconds > 0")
        return v

    @field_validator("rate_limit_rpm", "rate_limit_ipm", "max_connections")
    @classmethod
    def _counts(cls, v: int, info: ValidationInfo) -> int:
        if v < (1 if info.field_name == "max_connections" else 0):
            raise ValueError(f"VQA_{str(info.field_name).upper()} must be "
                             f"{'>= 1' if info.field_name == 'max_connections' else '>= 0 (0 = off)'}")
        return v


class CaptureSettings(BaseModel):
    url: str | None = Field(default=None, description="`sqlite:///PATH` or `postgresql://...`: keep answered "
                                                "requests for review and training (unset: capture off)")
    sample: float = Field(default=1.0, description="share of answered requests captured (0..1, decided per "
                                           "response id)")
    retention_days: int = Field(default=30, description="captured requests (and their pictures) are deleted "
                                                "after this many days (0 = kept until deleted)")
    images: bool = Field(default=True, description="keep the pictures as the model saw them (false: their "
                                           "content hash only)")
    review_below: float = Field(default=0.5, description="confidence under which an answer is flagged for "
                                                 "review (and hand-off to a person)")
    queue_max: int = Field(default=1000, description="captured requests waiting to be written; more are dropped "
                                             "and counted")
    queue_max_mb: int = Field(default=256, description="MB of pictures waiting to be written; more are dropped "
                                               "and counted")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None, info: ValidationInfo) -> str | None:
        from vqaserve.capture.store import parse_capture_url

        if v is None or not v.strip():
            return None
        return parse_capture_url(v).url

    @field_validator("sample", "review_below")
    @classmethod
    def _fraction(cls, v: float, info: ValidationInfo) -> float:
        if not math.isfinite(v) or not 0.0 <= v <= 1.0:
            name = "VQA_CAPTURE_SAMPLE" if info.field_name == "sample" else "VQA_REVIEW_BELOW"
            raise ValueError(f"{name} must be a number from 0 to 1 (e.g. {name}=0.5)")
        return v

    @field_validator("retention_days", "queue_max", "queue_max_mb")
    @classmethod
    def _counts(cls, v: int, info: ValidationInfo) -> int:
        if v < (0 if info.field_name == "retention_days" else 1):
            least = ">= 0 (0 = kept until deleted)" if info.field_name == "retention_days" else ">= 1"
            raise ValueError(f"{public_name('capture', str(info.field_name))} must be {least}")
        return v


# Flat public env names (DESIGN.md contract) -> (group, field)
FLAT: dict[str, tuple[str, str]] = {
    "host": ("server", "host"), "port": ("server", "port"), "workers": ("server", "workers"),
    "api_keys": ("server", "api_keys"), "api_keys_file": ("server", "api_keys_file"),
    "admin_keys": ("server", "admin_keys"), "admin_keys_file": ("server", "admin_keys_file"),
    "rate_limit_rpm": ("server", "rate_limit_rpm"), "rate_limit_ipm": ("server", "rate_limit_ipm"),
    "shutdown_grace_s": ("server", "shutdown_grace_s"),
    "max_connections": ("server", "max_connections"),
    "header_timeout_s": ("server", "header_timeout_s"), "body_timeout_s": ("server", "body_timeout_s"),
    "public_web_page": ("server", "public_web_page"),
    "forwarded_allow_ips": ("server", "forwarded_allow_ips"),
    "model": ("llm", "model"), "adapters": ("llm", "adapters"), "engine": ("llm", "engine"),
    "device": ("llm", "device"), "dtype": ("llm", "dtype"),
    "trust_remote_code": ("llm", "trust_remote_code"),
    "vision_memo_mb": ("llm", "vision_memo_mb"),
    "upstream_url": ("llm", "upstream_url"), "upstream_model": ("llm", "upstream_model"),
    "upstream_api_key": ("llm", "upstream_api_key"),
    "upstream_timeout_s": ("llm", "upstream_timeout_s"),
    "min_pixels": ("images", "min_pixels"), "max_pixels": ("images", "max_pixels"),
    "max_image_pixels": ("images", "max_image_pixels"), "max_images": ("images", "max_images"),
    "max_body_bytes": ("images", "max_body_bytes"), "local_image_dir": ("images", "local_image_dir"),
    "decoded_memo": ("images", "decoded_memo"),
    "max_new_tokens": ("generation", "max_new_tokens"),
    "request_timeout_s": ("generation", "request_timeout_s"),
    "temperature": ("generation", "temperature"),
    "redis_url": ("cache", "redis_url"), "cache_size": ("cache", "size"),
    "cache_near_duplicates": ("cache", "near_duplicates"),
    "batch_max_size": ("batching", "max_size"), "batch_max_wait_ms": ("batching", "max_wait_ms"),
    "queue_max": ("batching", "queue_max"),
    "batch_max_visual_tokens": ("batching", "max_visual_tokens"),
    "safety_image": ("safety", "image"), "safety_blocklist": ("safety", "blocklist"),
    "fetch_allow_private": ("fetch", "allow_private"), "fetch_allow_hosts": ("fetch", "allow_hosts"),
    "capture_url": ("capture", "url"), "capture_sample": ("capture", "sample"),
    "capture_retention_days": ("capture", "retention_days"), "capture_images": ("capture", "images"),
    "review_below": ("capture", "review_below"),
}


def public_name(group: str, fld: str) -> str:
    """The documented name of a setting: its flat name when it has one, else VQA_GROUP__FIELD."""
    for flat, where in FLAT.items():
        if where == (group, fld):
            return f"VQA_{flat.upper()}"
    return f"VQA_{group.upper()}__{fld.upper()}"
