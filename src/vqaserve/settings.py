"""One Settings object, read from VQA_* environment variables (and `vqa serve` flags).

The documented flat names (VQA_MODEL, VQA_REDIS_URL, ...) are public contracts; they fill nested
groups so code reads `settings.cache.redis_url` or `settings.llm.model` (the group is "llm" because
VQA_MODEL is the flat name of the model). Pass settings in; there is no module-level global.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODELS = Path(__file__).parent / "models"
DEFAULT_MODEL = "shop-toy"
PATCH = 32  # Qwen3-VL: patch 16 merged 2x2 -> one visual token per 32x32 pixels


class ModelSettings(BaseModel):
    model: str = DEFAULT_MODEL  # bundled name, model dir or hub id
    adapters: dict[str, str] = Field(default_factory=dict)  # NAME -> PATH
    engine: Literal["transformers", "upstream", "scripted"] = "transformers"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    trust_remote_code: bool = False  # operator opt-in only: it runs code from the model repo
    upstream_url: str | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = None
    upstream_timeout_s: float = 60.0
    upstream_retries: int = 3  # extra attempts on connect errors only (the request never arrived)
    upstream_breaker_failures: int = 5  # consecutive failures that open the circuit breaker
    upstream_breaker_reset_s: float = 10.0  # how long it stays open before one probe is let through
    upstream_image_format: Literal["auto", "png", "jpeg"] = "auto"  # how images travel upstream
    upstream_send_uuid: bool = True  # vLLM's per-image `uuid`; turn off for servers that reject it


class ImageSettings(BaseModel):
    min_pixels: int = 256 * PATCH * PATCH
    max_pixels: int = 1280 * PATCH * PATCH
    max_image_pixels: int = 64_000_000  # decode limit (decompression bombs)
    max_images: int = 8
    max_body_bytes: int = 25 * 1024 * 1024
    local_image_dir: str | None = None  # local paths in requests only from here (CLI allows any)
    decoded_memo: int = Field(default=128, ge=0)  # decoded pictures remembered by their bytes (0 = off)

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
    max_new_tokens: int = 64
    max_new_tokens_limit: int = 2048
    max_question_chars: int = 4000
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    request_timeout_s: float = 120.0

    @field_validator("temperature")
    @classmethod
    def _temp(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError("VQA_TEMPERATURE must be a finite number >= 0 (0 = greedy)")
        return v


class CacheSettings(BaseModel):
    size: int = 1000  # L1 entries
    max_bytes: int = 64 * 1024 * 1024  # L1 bytes
    redis_url: str | None = None
    redis_prefix: str = "vqa"
    redis_ttl_s: int = 7 * 24 * 3600
    redis_timeout_ms: int = 100
    redis_probe_interval_s: float = 0.5  # first background probe after the breaker opens (doubles to 5 s)
    near_duplicates: bool = False
    near_duplicates_max: int = 2_000  # images the near-duplicate index remembers (~28 kB each)
    enabled: bool = True


class SafetySettings(BaseModel):
    image: str = "nudenet"  # nudenet | off | hf:PATH | marker (flags magenta images: tests, demos)
    image_threshold: float = 0.6
    image_threads: int = 1  # onnxruntime threads for the NudeNet check (the engine owns the other cores)
    unsafe_labels: list[str] = Field(default_factory=list)  # empty: the checker's own default set
    blocklist: str | None = None  # path; default: the bundled list
    refusal_en: str = "Sorry, I can't help with that."
    refusal_zh: str = "抱歉，我无法回答这个问题。"

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v not in ("nudenet", "off", "marker") and not v.startswith("hf:"):
            raise ValueError("VQA_SAFETY_IMAGE must be 'nudenet', 'off', 'marker' or 'hf:<model dir>'")
        return v


class FetchSettings(BaseModel):
    allow_private: bool = False
    allow_hosts: list[str] = Field(default_factory=list)
    timeout_s: float = 5.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3


class BatchSettings(BaseModel):
    max_size: int = 16
    max_wait_ms: float = 10.0
    queue_max: int = 256
    # Fairness: a batch holds at most this many visual tokens (one request alone may exceed it).
    max_visual_tokens: int = 16384
    # Skip the max_wait gather while traffic is serial (it only adds latency at concurrency 1).
    adaptive_wait: bool = True

    @field_validator("max_size", "queue_max", "max_visual_tokens")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("VQA_BATCH_MAX_SIZE, VQA_QUEUE_MAX and VQA_BATCH_MAX_VISUAL_TOKENS must be >= 1")
        return v


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_keys: list[str] = Field(default_factory=list)
    api_keys_file: str | None = None
    public_web_page: bool = True  # the page at / needs no key (its API calls still do)
    rate_limit_rpm: int = 0  # per key requests/min, 0 = off
    rate_limit_ipm: int = 0  # per key images/min, 0 = off
    shutdown_grace_s: float = 30.0
    max_connections: int = 256
    header_timeout_s: float = 10.0  # a request head must arrive whole within this (slowloris)
    body_timeout_s: float = 120.0  # the whole body must arrive within this after the head
    log_json: bool = True

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


# Flat public env names (DESIGN.md contract) -> (group, field)
FLAT: dict[str, tuple[str, str]] = {
    "host": ("server", "host"), "port": ("server", "port"), "workers": ("server", "workers"),
    "api_keys": ("server", "api_keys"), "api_keys_file": ("server", "api_keys_file"),
    "rate_limit_rpm": ("server", "rate_limit_rpm"), "rate_limit_ipm": ("server", "rate_limit_ipm"),
    "shutdown_grace_s": ("server", "shutdown_grace_s"),
    "max_connections": ("server", "max_connections"),
    "header_timeout_s": ("server", "header_timeout_s"), "body_timeout_s": ("server", "body_timeout_s"),
    "public_web_page": ("server", "public_web_page"),
    "model": ("llm", "model"), "adapters": ("llm", "adapters"), "engine": ("llm", "engine"),
    "device": ("llm", "device"), "dtype": ("llm", "dtype"),
    "trust_remote_code": ("llm", "trust_remote_code"),
    "upstream_url": ("llm", "upstream_url"), "upstream_model": ("llm", "upstream_model"),
    "upstream_api_key": ("llm", "upstream_api_key"),
    "upstream_timeout_s": ("llm", "upstream_timeout_s"),
    "min_pixels": ("images", "min_pixels"), "max_pixels": ("images", "max_pixels"),
    "max_image_pixels": ("images", "max_image_pixels"), "max_images": ("images", "max_images"),
    "max_body_bytes": ("images", "max_body_bytes"), "local_image_dir": ("images", "local_image_dir"),
    "decoded_memo": ("images", "decoded_memo"),
    "max_new_tokens": ("generation", "max_new_tokens"),
    "request_timeout_s": ("generation", "request_timeout_s"),
    "redis_url": ("cache", "redis_url"), "cache_size": ("cache", "size"),
    "cache_near_duplicates": ("cache", "near_duplicates"),
    "batch_max_size": ("batching", "max_size"), "batch_max_wait_ms": ("batching", "max_wait_ms"),
    "queue_max": ("batching", "queue_max"),
    "batch_max_visual_tokens": ("batching", "max_visual_tokens"),
    "safety_image": ("safety", "image"), "safety_blocklist": ("safety", "blocklist"),
    "fetch_allow_private": ("fetch", "allow_private"), "fetch_allow_hosts": ("fetch", "allow_hosts"),
}


def _split_list(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def parse_adapters(v: Any) -> dict[str, str]:
    """`NAME=PATH,NAME=PATH` (or a list of NAME=PATH) -> dict; clear error otherwise."""
    if isinstance(v, dict):
        return {str(k): str(p) for k, p in v.items()}
    items = _split_list(v) or []
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = str(item).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"adapter {item!r} must look like NAME=PATH (e.g. sunglasses=./adapter)")
        out[name.strip()] = path.strip()
    return out


class Settings(BaseSettings):
    """All options. Flat VQA_* names are accepted as well as nested VQA_GROUP__FIELD."""

    model_config = SettingsConfigDict(env_prefix="VQA_", env_nested_delimiter="__", extra="ignore")

    llm: ModelSettings = Field(default_factory=ModelSettings)  # "model" is the flat VQA_MODEL name
    images: ImageSettings = Field(default_factory=ImageSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    batching: BatchSettings = Field(default_factory=BatchSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Fold flat keys (from env VQA_X or CLI flags) into their groups."""
        import os

        if not isinstance(data, dict):
            return data
        data = dict(data)
        flat = {k: data.pop(k) for k in list(data) if k in FLAT}
        for name in FLAT:
            env = os.environ.get(f"VQA_{name.upper()}")
            if env is not None and name not in flat:
                flat[name] = env
        for name, value in flat.items():
            group, fld = FLAT[name]
            if name == "adapters":
                value = parse_adapters(value)
            elif name in ("api_keys", "fetch_allow_hosts"):
                value = _split_list(value)
            grp = data.get(group)
            if grp is None:
                grp = {}
            elif isinstance(grp, BaseModel):
                grp = grp.model_dump()
            grp = dict(grp)
            grp[fld] = value
            data[group] = grp
        return data

    @model_validator(mode="after")
    def _keys_file(self) -> Settings:
        if self.server.api_keys_file:
            path = Path(self.server.api_keys_file)
            if not path.is_file():
                raise ValueError("VQA_API_KEYS_FILE does not name a readable file; fix the path")
            keys = [ln.strip() for ln in path.read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")]
            self.server.api_keys = [*self.server.api_keys, *keys]
        return self


def resolve_model_path(name: str) -> str:
    """A bundled model name ("shop-toy") -> its directory; anything else is returned unchanged."""
    bundled = BUNDLED_MODELS / name
    if "/" not in name and bundled.is_dir():
        return str(bundled)
    return name


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus explicit overrides (CLI flags); one-line errors."""
    from pydantic import ValidationError

    from vqaserve.errors import ConfigError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {where}: {msg}" if where else msg) from None
