"""Unit tests of the operations pieces: key checks, token buckets, image counting, static paths."""

from __future__ import annotations

import asyncio
import json

import pytest

from vqaserve.cache.redis_link import RedisLink
from vqaserve.errors import ConfigError
from vqaserve.server.access import KeyChecker, bearer_token, key_id
from vqaserve.server.ratelimit import Limit, LocalBuckets, RateLimiter, count_images
from vqaserve.server.static_files import is_safe_relative
from vqaserve.settings import load_settings

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import vqaserve.server.ratelimit as rl

    c = Clock()
    monkeypatch.setattr(rl, "time", c)
    return c


def test_key_checker_accepts_exactly_the_configured_keys() -> None:
    checker = KeyChecker(["alpha-key", "beta-key", ""])
    assert checker.enabled
    assert checker.valid("alpha-key") and checker.valid("beta-key")
    for wrong in ("alpha-ke", "alpha-key ", "ALPHA-KEY", "", "beta-keyx", "é"):
        assert not checker.valid(wrong), wrong
    assert not KeyChecker([]).enabled


def test_key_id_is_stable_and_does_not_contain_the_key() -> None:
    assert key_id("secret-123") == key_id("secret-123") != key_id("secret-124")
    assert "secret" not in key_id("secret-123")


@pytest.mark.parametrize(("header", "token"), [
    (b"Bearer abc", "abc"), (b"bearer   abc  ", "abc"), (b"Basic abc", None), (b"Bearer", None),
    (b"abc", None),
])
def test_bearer_token_parsing(header: bytes, token: str | None) -> None:
    assert bearer_token({"headers": [(b"authorization", header)]}) == token
    assert bearer_token({"headers": []}) is None


def test_bucket_allows_a_minute_of_burst_then_refills_at_the_rate(clock: Clock) -> None:
    buckets = LocalBuckets()
    limit = Limit("requests", 6)  # 6/min = one every 10 s
    taken = [buckets.take([("k", limit, 1)]) for _ in range(7)]
    assert taken[:6] == [0.0] * 6
    assert taken[6] == pytest.approx(10.0)
    clock.now += 9.0
    assert buckets.take([("k", limit, 1)]) == pytest.approx(1.0)
    clock.now += 1.0
    assert buckets.take([("k", limit, 1)]) == 0.0
    # Another key has its own bucket.
    assert buckets.take([("other", limit, 1)]) == 0.0


def test_bucket_takes_from_all_buckets_or_none(clock: Clock) -> None:
    buckets = LocalBuckets()
    rpm, ipm = Limit("requests", 10), Limit("images", 3)
    assert buckets.take([("r", rpm, 1), ("i", ipm, 2)]) == 0.0
    wait = buckets.take([("r", rpm, 1), ("i", ipm, 2)])  # 1 image token left, 2 wanted
    assert wait == pytest.approx(20.0)  # one image token refills in 60/3 s
    # The refused request took nothing: the request bucket still has 9 tokens.
    assert [buckets.take([("r", rpm, 1)]) for _ in range(9)] == [0.0] * 9
    assert buckets.take([("r", rpm, 1)]) > 0


async def test_limiter_falls_back_to_local_buckets_when_redis_is_unreachable() -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = RedisLink(f"redis://127.0.0.1:{port}/0", timeout_ms=100, probe_interval_s=0.05,
                     max_probe_interval_s=0.05)
    limiter = RateLimiter(2, 0, redis=link)
    try:
        started = time.monotonic()
        results = [await limiter.check("k") for _ in range(3)]
        assert results[:2] == [0.0, 0.0] and results[2] > 0  # still limited, by the local bucket
        assert limiter.redis_failures == 1  # one failed try, then Redis is left alone
        assert time.monotonic() - started < 2.0
        assert link.breaker.state != "closed"
        await asyncio.sleep(0.3)  # the link's background probe keeps finding Redis down
        await limiter.check("k")
        assert limiter.redis_failures == 1 and link.breaker.state != "closed"  # no request tried it
        assert link.breaker.last_error.startswith("probe:")
    finally:
        await link.aclose()


async def test_limiter_without_redis_and_off() -> None:
    off = RateLimiter(0, 0)
    assert not off.enabled
    assert await off.check("anyone", images=50) == 0.0
    only_images = RateLimiter(0, 2)
    assert await only_images.check("a", images=0) == 0.0  # no images, nothing to count
    assert await only_images.check("a", images=2) == 0.0
    assert await only_images.check("a", images=1) > 0


def test_count_images_counts_image_parts_in_every_message() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:,"}}
    body = {"messages": [{"role": "system", "content": "hi"},
                         {"role": "user", "content": [part, {"type": "text", "text": "\"image_url\""}, part]},
                         {"role": "assistant", "content": [part]}]}
    assert count_images("/v1/chat/completions", json.dumps(body).encode()) == 3
    assert count_images("/v1/chat/completions", b"{not json") == 0
    assert count_images("/v1/chat/completions", b"[1, 2]") == 0
    assert count_images("/v1/chat/completions", b'{"messages": "x"}') == 0
    assert count_images("/v1/vqa", b"--multipart--") == 1
    assert count_images("/v1/models", b"") == 0


@pytest.mark.parametrize("path", ["app.js", "style.css", "img/logo.png"])
def test_ordinary_static_paths_are_safe(path: str) -> None:
    assert is_safe_relative(path)


@pytest.mark.parametrize("path", [
    "../app.py", "a/../../x", "a/../b", "..", "%2e%2e/x", "%252e%252e/x", "..\\app.py", "a\\b",
    "/etc/passwd", "\\\\server\\share", ".env", "a/.git/config", "x\x00.js", "", "a//b", "C:/x",
])
def test_traversal_and_trick_paths_are_refused(path: str) -> None:
    assert not is_safe_relative(path)


@pytest.mark.parametrize(("field", "value"), [
    ("header_timeout_s", "0"), ("body_timeout_s", "-1"), ("shutdown_grace_s", "nan"),
    ("rate_limit_rpm", "-5"), ("max_connections", "0"),
])
def test_bad_ops_settings_name_the_variable(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"VQA_{field.upper()}"):
        load_settings(**{field: value})


def test_keys_file_and_env_keys_are_merged(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys.txt"
    keys.write_text("# ops keys\nfile-key-1\n\n  file-key-2  \n")
    monkeypatch.setenv("VQA_API_KEYS", "env-key,  other-env-key")
    monkeypatch.setenv("VQA_API_KEYS_FILE", str(keys))
    s = load_settings()
    assert s.server.api_keys == ["env-key", "other-env-key", "file-key-1", "file-key-2"]


def test_timed_protocol_is_a_uvicorn_protocol_with_the_configured_deadlines() -> None:
    from vqaserve.server.limits import ReadDeadlines, timed_protocol, uvicorn_limits

    cls = timed_protocol(2.5, 7.0)
    assert issubclass(cls, ReadDeadlines)
    assert cls.header_timeout_s == 2.5 and cls.body_timeout_s == 7.0
    kw = uvicorn_limits(load_settings(max_connections="40", shutdown_grace_s="12"))
    assert kw["limit_concurrency"] == 40 and kw["timeout_graceful_shutdown"] == 12
