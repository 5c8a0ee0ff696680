"""Settings: public flat VQA_* names, nested groups, validation messages that name the fix."""

from __future__ import annotations

import pytest

from vqaserve.errors import ConfigError
from vqaserve.settings import load_settings, resolve_model_path

pytestmark = pytest.mark.unit


def test_defaults_serve_bundled_model_locally() -> None:
    s = load_settings()
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8000)
    assert s.llm.model == "shop-toy" and s.llm.engine == "transformers"
    assert s.cache.size == 1000 and s.cache.redis_url is None
    assert s.images.min_pixels == 256 * 32 * 32 and s.images.max_pixels == 1280 * 32 * 32
    assert s.llm.trust_remote_code is False


def test_flat_public_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"VQA_HOST": "0.0.0.0", "VQA_PORT": "9001", "VQA_MODEL": "/models/qwen",
           "VQA_ADAPTERS": "a=/x, b=/y", "VQA_ENGINE": "upstream", "VQA_REDIS_URL": "redis://r:6379/0",
           "VQA_CACHE_SIZE": "5", "VQA_BATCH_MAX_SIZE": "4", "VQA_QUEUE_MAX": "9",
           "VQA_SAFETY_IMAGE": "off", "VQA_FETCH_ALLOW_HOSTS": "img.shop.local,cdn.shop.local",
           "VQA_API_KEYS": "k1,k2", "VQA_MAX_IMAGES": "3"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert (s.server.host, s.server.port, s.llm.model, s.llm.engine) == ("0.0.0.0", 9001, "/models/qwen",
                                                                         "upstream")
    assert s.llm.adapters == {"a": "/x", "b": "/y"}
    assert (s.cache.redis_url, s.cache.size, s.batching.max_size, s.batching.queue_max) == (
        "redis://r:6379/0", 5, 4, 9)
    assert s.safety.image == "off" and s.fetch.allow_hosts == ["img.shop.local", "cdn.shop.local"]
    assert s.server.api_keys == ["k1", "k2"] and s.images.max_images == 3


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQA_PORT", "9001")
    assert load_settings(port=9100).server.port == 9100


@pytest.mark.parametrize(("env", "needle"), [
    ({"VQA_MAX_PIXELS": "10"}, "VQA_MAX_PIXELS"),
    ({"VQA_SAFETY_IMAGE": "maybe"}, "VQA_SAFETY_IMAGE"),
    ({"VQA_ADAPTERS": "noequals"}, "NAME=PATH"),
    ({"VQA_BATCH_MAX_SIZE": "0"}, "VQA_BATCH_MAX_SIZE"),
    ({"VQA_PORT": "eighty"}, "VQA_PORT"),
])
def test_bad_values_name_the_fix(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert needle in info.value.message and "\n" not in info.value.message


def test_bundled_model_name_resolves_to_package_dir() -> None:
    assert resolve_model_path("Qwen/Qwen3-VL-8B-Instruct") == "Qwen/Qwen3-VL-8B-Instruct"
    assert resolve_model_path("/abs/dir") == "/abs/dir"
