"""API keys: `Authorization: Bearer <key>` on every route but the probes (and the page, if public).

Keys come from VQA_API_KEYS and/or VQA_API_KEYS_FILE (settings merge both). No keys = open
service (the default for a laptop on 127.0.0.1). The given key is compared with every configured
key by `hmac.compare_digest`, without stopping at the first match, so the time taken says nothing
about which key (or how much of one) was right. Requests carry on with `scope["state"]["api_key_id"]`,
a short digest of the key (never the key itself) that names the caller in rate limits and logs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from vqaserve.server.middleware import error_json

# Paths that never need a key: the probes, so that an orchestrator needs no secret (their answers
# say how the service fares, never a key or a path). The web page itself may be public (its API
# calls still need the key).
OPEN_PATHS = frozenset({"/health", "/ready"})
# The admin API checks admin keys itself (server/admin_access.py): an API key never opens it.
ADMIN_PREFIX = "/admin/"
PAGE_PATHS = frozenset({"/", "/review", "/favicon.ico"})  # the review page's data needs a key all the same
PAGE_PREFIX = "/static/"


def key_id(key: str) -> str:
    """A stable, non-reversible name for a key (rate-limit buckets, logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class KeyChecker:
    """Constant-time membership over all keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        # Compare fixed-length digests: compare_digest on raw keys of different lengths returns
        # early on the length, which would leak the lengths of the configured keys.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in dict.fromkeys(keys) if k]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def valid(self, token: str) -> bool:
        given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(given, digest)
        return found


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Sequence[str], public_web_page: bool = True) -> None:
        self.app = app
        self.checker = KeyChecker(keys)
        self.public_web_page = public_web_page

    def _open(self, scope: Scope) -> bool:
        path = scope["path"]
        if path in OPEN_PATHS or path.startswith(ADMIN_PREFIX):
            return True
        return self.public_web_page and scope["method"] in ("GET", "HEAD") and (
            path in PAGE_PATHS or path.startswith(PAGE_PREFIX))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.checker.enabled or self._open(scope):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not self.checker.valid(token):
            message = ("missing API key: send the header 'Authorization: Bearer <key>'" if token is None
                       else "invalid API key: check the key given in 'Authorization: Bearer <key>'")
            await error_json(401, message, "authentication_error", "Authorization", "invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key_id"] = key_id(token)
        await self.app(scope, receive, send)
