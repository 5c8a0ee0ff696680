"""Safe image fetching for http(s) URLs: the `ImageLoader` seam that images.read_ref calls.

One parser (httpx.URL) reads the URL; the same parsed object is checked and fetched. The host is
resolved once, EVERY address is checked, and the connection goes to the checked address (the URL's
host is replaced by that IP; Host header and TLS SNI/certificate name stay the original host), so a
second DNS answer can never redirect us. Redirects are followed by hand (at most 3), each hop checked
the same way. The body is streamed under a byte cap (Content-Length checked first; gzip/deflate are
inflated by us under the same cap, others refused), and the whole fetch runs under one total timeout,
so trickling servers fail too. No proxies from the environment, no cookies, no auth.

Errors: bad or refused URL -> 400 FetchRefused; upstream 4xx -> 400 naming the image; upstream 5xx,
DNS failure, connection failure -> 502; timeout -> 504; too big -> 413; not an image -> 415. Messages
name the request field, never the host or its addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from vqaserve.errors import FetchFailed, FetchRefused, PayloadTooLarge, UnsupportedFormat

if TYPE_CHECKING:
    import httpx

    from vqaserve.settings import Settings
    from vqaserve.types import ImageRef

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
# Test-only hook: (host, address, port) -> True lets that one address through the address rules.
TrustHook = Callable[[str, IPAddress, int], bool]

MAX_URL_CHARS = 4096
REDIRECTS = (301, 302, 303, 307, 308)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}"
                       r"[a-z0-9_])?)*\.?$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
HOW_TO_OPEN = "operators can allow on-prem hosts with VQA_FETCH_ALLOW_HOSTS or VQA_FETCH_ALLOW_PRIVATE"


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_problem(ip: IPAddress, allow_private: bool = False) -> str | None:
    """Why this address may not be fetched from (None: it is a public unicast address)."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        problem = address_problem(inner, allow_private)
        if problem:
            return problem
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "reserved"
    if ip.is_link_local:
        return "link-local"  # cloud metadata lives here: refused even with allow_private
    if ip.is_loopback or ip.is_private or not ip.is_global:
        return None if allow_private else "private"
    return None


def literal_address(host: str) -> IPAddress | None:
    """An IP literal in any form a resolver would accept (decimal, hex, octal, short IPv4), or None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            # inet_aton is the permissive parser libc uses: 2130706433, 0x7f000001, 127.1, 0177.0.0.1
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


class Fetcher:
    """`await Fetcher(settings).load(ref)` -> the image bytes behind an http(s) URL, or a clear error."""

    def __init__(self, settings: Settings, *, resolver: Resolver | None = None,
                 trusted: TrustHook | None = None, tls: ssl.SSLContext | None = None) -> None:
        f = settings.fetch
        self.allow_private = f.allow_private
        self.allow_hosts = [h.strip().lower().rstrip(".") for h in f.allow_hosts if h.strip()]
        self.timeout_s = f.timeout_s
        self.max_bytes = f.max_bytes
        self.max_redirects = f.max_redirects
        self.resolver = resolver or system_resolver
        self.trusted = trusted
        self.tls = tls  # None: the system's CA bundle (certifi); tests pass their own CA

    # --- checks ------------------------------------------------------------------------------------
    def parse(self, raw: str, name: str) -> httpx.URL:
        """The one parse of a client URL (or a redirect target), with the syntax rules applied."""
        import httpx

        if len(raw) > MAX_URL_CHARS:
            raise FetchRefused(f"{name}: image URL is longer than {MAX_URL_CHARS} characters", param=name)
        if "\\" in raw or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in raw):
            # Parsers disagree on these (WHATWG reads "\" as "/"): refuse rather than guess.
            raise FetchRefused(f"{name}: image URL contains spaces, control characters or backslashes; "
                               "percent-encode them", param=name)
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise FetchRefused(f"{name}: not a valid image URL", param=name) from None
        return url

    def _check_syntax(self, url: httpx.URL, name: str) -> tuple[str, int]:
        if url.scheme not in ("http", "https"):
            raise FetchRefused(f"{name}: only http and https image URLs are accepted (not "
                               f"{url.scheme + '://' if url.scheme else 'a local path'}); "
                               "send the image inline as a data: URI instead", param=name)
        if url.userinfo:
            raise FetchRefused(f"{name}: image URLs with a user name or password (user@host) are refused",
                               param=name)
        host = url.raw_host.decode("ascii", "replace").lower()
        if not host:
            raise FetchRefused(f"{name}: image URL has no host", param=name)
        if literal_address(host) is None and not _HOSTNAME.match(host):
            raise FetchRefused(f"{name}: image URL host is not a valid host name", param=name)
        port = url.port or (443 if url.scheme == "https" else 80)
        return host.rstrip("."), port

    def _host_allowed(self, host: str) -> bool:
        return any(host == rule or (rule.startswith("*.") and host.endswith(rule[1:]))
                   for rule in self.allow_hosts)

    async def addresses(self, url: httpx.URL, name: str) -> tuple[str, IPAddress, int]:
        """Resolve once and check every address; return (host, the address to connect to, port)."""
        host, port = self._check_syntax(url, name)
        literal = literal_address(host)
        if literal is not None:
            candidates: list[IPAddress] = [literal]
        else:
            try:
                found = await self.resolver(host, port)
                candidates = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
            except (OSError, UnicodeError, ValueError):
                candidates = []
            if not candidates:
                raise FetchFailed(f"{name}: the image host name could not be resolved; check the URL",
                                  status=502, param=name)
        host_allowed = self._host_allowed(host)
        for ip in candidates:
            if self.trusted is not None and self.trusted(host, ip, port):
                continue
            problem = address_problem(ip, self.allow_private or host_allowed)
            if problem == "link-local" and host_allowed:
                problem = None  # the operator named this host explicitly
            if problem:
                # Any bad record refuses the URL: no "try the next one", no DNS-rebinding games.
                raise FetchRefused(f"{name}: image URL points to a {problem} network address; such URLs "
                                   f"are refused ({HOW_TO_OPEN})", param=name)
        return host, candidates[0], port

    # --- fetching ----------------------------------------------------------------------------------
    async def load(self, ref: ImageRef) -> bytes:
        name = ref.name
        url = self.parse(str(ref.payload), name)
        self._check_syntax(url, name)  # syntax errors before any network work
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url, name)
        except TimeoutError:
            raise FetchFailed(f"{name}: the image host did not send the image within {self.timeout_s:g} s; "
                              "try again or send the image inline", status=504, param=name) from None

    async def _follow(self, url: httpx.URL, name: str) -> bytes:
        import httpx

        checked = await self.addresses(url, name)  # refused URLs never even build a client
        # No pooling across fetches (a fresh client each time) and nothing from the environment.
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, verify=self.tls or _tls_context(),
                                     timeout=httpx.Timeout(self.timeout_s)) as client:
            for hop in range(self.max_redirects + 1):
                try:
                    result = await self._get(client, url, *checked, name)
                except httpx.TimeoutException:
                    raise TimeoutError from None
                except httpx.HTTPError:
                    raise FetchFailed(f"{name}: could not download the image (connection failed or broke "
                                      "off); check the URL or send the image inline",
                                      status=502, param=name) from None
                if isinstance(result, bytes):
                    return result
                if hop == self.max_redirects:
                    break
                url = url.join(self.parse(result, name))
                checked = await self.addresses(url, name)  # every hop: syntax, scheme, every address
        raise FetchRefused(f"{name}: image URL redirects more than {self.max_redirects} times", param=name)

    async def _get(self, client: httpx.AsyncClient, url: httpx.URL, host: str, ip: IPAddress, port: int,
                   name: str) -> bytes | str:
        """One request to the checked address: the body, or the raw Location of a redirect."""
        target = url.copy_with(host=str(ip), fragment=None)
        # Host header exactly as the URL wrote it (the checked URL), TLS name = the host, not the IP.
        headers = {"Host": url.netloc.decode("ascii"),
                   "Accept": "image/*", "Accept-Encoding": "gzip, deflate, identity;q=0.5",
                   "User-Agent": "vqaserve-fetch/0.1"}
        extensions: dict[str, Any] = {"sni_hostname": host} if url.scheme == "https" else {}
        request = client.build_request("GET", target, headers=headers, extensions=extensions)
        response = await client.send(request, stream=True)
        try:
            status = response.status_code
            if status in REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise FetchFailed(f"{name}: the image host sent a redirect without a target",
                                      status=502, param=name)
                return str(location)
            if 400 <= status < 500:
                # The upstream's own reason text is not echoed: it could carry internal names.
                raise FetchFailed(f"{name}: the image host answered {status} {_phrase(status)}; check that "
                                  "the image URL is right and public", status=400, param=name)
            if status != 200:
                raise FetchFailed(f"{name}: the image host answered {status}; try again later or send the "
                                  "image inline", status=502, param=name)
            self._check_headers(response, name)
            return await self._read_capped(response, name)
        finally:
            await response.aclose()

    def _check_headers(self, response: httpx.Response, name: str) -> None:
        ctype = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not ctype.startswith("image/"):
            raise UnsupportedFormat(f"{name}: the URL returned {ctype or 'no content type'}, not an image; "
                                    "link to the image file itself", param=name)
        length = response.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > self.max_bytes:
                raise self._too_large(name)

    def _too_large(self, name: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"{name}: the image at this URL is larger than the {self.max_bytes:,} byte "
                               "limit; link to a smaller image", param=name)

    async def _read_capped(self, response: httpx.Response, name: str) -> bytes:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        inflater: Any = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, auto-detected
        elif encoding not in ("", "identity"):
            raise FetchFailed(f"{name}: the image host used an unsupported content encoding",
                              status=502, param=name)
        out = bytearray()
        async for chunk in response.aiter_raw(65536):
            if inflater is None:
                out += chunk
            else:
                # Inflate at most one byte past the cap per step: a gzip bomb never expands in memory.
                data = chunk
                while data and len(out) <= self.max_bytes:
                    out += inflater.decompress(data, self.max_bytes + 1 - len(out))
                    data = inflater.unconsumed_tail
            if len(out) > self.max_bytes:
                raise self._too_large(name)
        if inflater is not None:
            out += inflater.flush(self.max_bytes + 1 - len(out))
            if len(out) > self.max_bytes:
                raise self._too_large(name)
        return bytes(out)


_TLS: Any = None


def _tls_context() -> Any:
    """One verifying TLS context for all fetches (building one per client costs ~50 ms)."""
    global _TLS
    if _TLS is None:
        import certifi

        _TLS = ssl.create_default_context(cafile=certifi.where())
    return _TLS


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def build_fetcher(settings: Settings) -> Fetcher:
    return Fetcher(settings)
