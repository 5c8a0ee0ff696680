"""Safe fetching (cases 8-15, and cases 1-5 by URL). Listeners run on 127.0.0.0/8 only.

"Refused" addresses get a real listener where one can exist here (127.x) and must see zero
connections; for the others (169.254.169.254, 10/8, ...) a spy on httpx's transport proves that no
connection was even attempted.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import httpx
import pytest
from fake_hosts import FakeHost, endless, gzip_bomb, hosts, redirect, response, silent, trickle
from hostile_helpers import assert_clean, encoded, gif_frames, png_bomb

from tests.conftest import image_bytes
from vqaserve.errors import (
    FetchFailed,
    FetchRefused,
    ImageTooLarge,
    InvalidImage,
    PayloadTooLarge,
    UnsupportedFormat,
    VQAError,
)
from vqaserve.images import decode as imgs
from vqaserve.images.fetch import Fetcher, address_problem, literal_address
from vqaserve.settings import Settings
from vqaserve.types import ImageRef

pytestmark = pytest.mark.integration
GOOD = image_bytes()
NAME = "messages[0].content[1].image_url"


def settings(**fetch: object) -> Settings:
    # generous: the test box is shared and loaded; only the timeout test itself uses a short one
    return Settings(fetch={"timeout_s": 10.0, "max_bytes": 1_000_000, **fetch})


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request httpx's transport was asked to send (a connection attempt)."""
    seen: list[str] = []
    original = httpx.AsyncHTTPTransport.handle_async_request

    async def spy(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return await original(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", spy)
    return seen


def trust(*servers: FakeHost) -> object:
    """Test-only allow hook: these 127.0.0.1 servers play 'public' hosts."""
    allowed = {(s.address, s.port) for s in servers}
    return lambda host, ip, port: (str(ip), port) in allowed


async def fetch(fetcher: Fetcher, url: str) -> bytes:
    return await fetcher.load(ImageRef("url", url, NAME))


async def refused(fetcher: Fetcher, url: str, error: type[VQAError] = FetchRefused, *words: str) -> VQAError:
    with pytest.raises(error) as info:
        await fetch(fetcher, url)
    assert_clean(info.value, NAME, *words)
    return info.value


# --- case 8: literal internal addresses in every spelling -------------------------------------------
LOOPBACK_SPELLINGS = ["http://127.0.0.1:{p}/img.png", "http://2130706433:{p}/img.png",
                      "http://0x7f000001:{p}/img.png", "http://127.1:{p}/img.png", "http://0x7f.1:{p}/img.png",
                      "http://[::ffff:127.0.0.1]:{p}/img.png", "http://[::ffff:7f00:1]:{p}/img.png",
                      "http://0.0.0.0:{p}/img.png", "http://localhost:{p}/img.png", "http://LOCALHOST.:{p}/img.png",
                      "http://[::1]:{p}/img.png", "http://[64:ff9b::7f00:1]:{p}/img.png",
                      "http://[2002:7f00:1::]:{p}/img.png"]
OTHER_INTERNAL = ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.png", "http://172.16.5.4/a.png",
                  "http://192.168.1.1/a.png", "http://100.64.0.1/a.png", "http://224.0.0.1/a.png",
                  "http://[fe80::1]/a.png", "http://[fd00::1]/a.png", "http://[::]/a.png",
                  "http://240.0.0.1/a.png", "http://0/a.png", "http://2852039166/", "http://0xa9fea9fe/",
                  "http://[::ffff:169.254.169.254]/", "http://198.18.0.1/a.png"]


async def test_case8_loopback_spellings_refused_with_zero_hits(attempts: list[str]) -> None:
    async with FakeHost(routes={"/img.png": response("200 OK", GOOD)}) as listener:
        fetcher = Fetcher(settings())
        for spelling in LOOPBACK_SPELLINGS:
            await refused(fetcher, spelling.format(p=listener.port), FetchRefused, "refused")
        assert listener.connections == 0 and attempts == []
        # the next good request (the same listener, now trusted as public) succeeds
        assert await fetch(Fetcher(settings(), trusted=trust(listener)), listener.url()) == GOOD


async def test_case8_other_internal_ranges_refused_without_connecting(attempts: list[str]) -> None:
    fetcher = Fetcher(settings())
    for url in OTHER_INTERNAL:
        await refused(fetcher, url, FetchRefused, "refused")
    assert attempts == []


def test_case8_address_rules() -> None:
    for text in ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fe80::1", "::ffff:10.0.0.1", "0.0.0.0",
                 "100.64.1.1", "fc00::1", "ff02::1", "64:ff9b::a00:1", "2001:0:4136:e378:8000:63bf:3fff:fdd2"]:
        assert address_problem(ipaddress.ip_address(text)) is not None, text
    for text in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"]:
        assert address_problem(ipaddress.ip_address(text)) is None, text
    # allow_private opens private ranges, never link-local (cloud metadata), multicast or unspecified
    assert address_problem(ipaddress.ip_address("10.1.2.3"), allow_private=True) is None
    for text in ["169.254.169.254", "224.0.0.1", "0.0.0.0"]:
        assert address_problem(ipaddress.ip_address(text), allow_private=True) is not None
    assert literal_address("0177.0.0.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("cafe.de") is None


# --- case 9: redirects, every hop re-checked ---------------------------------------------------------
async def test_case9_redirect_to_internal_refused(attempts: list[str]) -> None:
    internal = FakeHost("127.0.0.2", routes={"/img.png": response("200 OK", GOOD)})
    public = FakeHost()
    async with hosts(internal, public):
        public.routes.update({
            "/to-internal": redirect(internal.url()),
            "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/", "307 Temporary Redirect"),
            "/to-file": redirect("file:///etc/passwd"),
            "/to-decimal": redirect(f"http://2130706434:{internal.port}/img.png"),
            "/loop": redirect("/loop"),
            "/hop1": redirect("/hop2", "301 Moved Permanently"),
            "/hop2": redirect("/img.png", "308 Permanent Redirect"),
            "/img.png": response("200 OK", GOOD),
        })
        fetcher = Fetcher(settings(), trusted=trust(public))
        for path in ["/to-internal", "/to-metadata", "/to-decimal"]:
            await refused(fetcher, public.url(path), FetchRefused, "refused")
        await refused(fetcher, public.url("/to-file"), FetchRefused, "http")
        await refused(fetcher, public.url("/loop"), FetchRefused, "redirects more than 3")
        assert internal.connections == 0
        assert not any("169.254" in a for a in attempts)
        assert await fetch(fetcher, public.url("/hop1")) == GOOD  # relative redirects within a public host


# --- case 10: DNS answers checked, one lookup, connect to the checked address -----------------------
async def test_case10_hostnames_resolving_inside_refused() -> None:
    async with FakeHost("127.0.0.3", routes={"/img.png": response("200 OK", GOOD)}) as listener:
        answers = {"private.shop.test": ["127.0.0.3"], "mixed.shop.test": ["93.184.216.34", "127.0.0.3"],
                   "v6.shop.test": ["::ffff:127.0.0.3"]}

        async def resolver(host: str, port: int) -> list[str]:
            return answers[host]

        fetcher = Fetcher(settings(), resolver=resolver)
        for host in answers:
            await refused(fetcher, f"http://{host}:{listener.port}/img.png", FetchRefused, "refused")
        assert listener.connections == 0


async def test_case10_connects_to_the_checked_address_with_one_lookup() -> None:
    async with FakeHost(routes={"/img.png": response("200 OK", GOOD)}) as server:
        calls: list[str] = []

        async def rebinding(host: str, port: int) -> list[str]:
            calls.append(host)  # a rebinding resolver: the first answer is "public", the next internal
            return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.9"]

        fetcher = Fetcher(settings(), resolver=rebinding,
                          trusted=lambda host, ip, port: host == "catalogue.test" and str(ip) == "127.0.0.1")
        assert await fetch(fetcher, f"http://catalogue.test:{server.port}/img.png") == GOOD
        assert calls == ["catalogue.test"]  # exactly one lookup per hop
        assert server.hosts == [f"catalogue.test:{server.port}"]  # Host header kept, socket to the IP


async def test_allow_hosts_and_allow_private_open_on_prem_catalogues() -> None:
    async with FakeHost(routes={"/img.png": response("200 OK", GOOD)}) as server:
        async def resolver(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        url = f"http://images.corp.test:{server.port}/img.png"
        await refused(Fetcher(settings(), resolver=resolver), url, FetchRefused, "VQA_FETCH_ALLOW_HOSTS")
        ok = Fetcher(settings(allow_hosts=["*.corp.test"]), resolver=resolver)
        assert await fetch(ok, url) == GOOD
        assert await fetch(Fetcher(settings(allow_private=True), resolver=resolver), url) == GOOD
        # naming one host opens only that host
        await refused(Fetcher(settings(allow_hosts=["other.corp.test"]), resolver=resolver), url)


# --- cases 11, 12: parser tricks and schemes ---------------------------------------------------------
async def test_case11_parser_tricks_refused(attempts: list[str]) -> None:
    async with FakeHost(routes={"/img.png": response("200 OK", GOOD)}) as listener:
        p = listener.port
        tricks = [f"http://public.example@127.0.0.1:{p}/img.png", f"http://127.0.0.1:{p}\\@public.example/",
                  f"http://public.example\\@127.0.0.1:{p}/", f"http://user:pw@public.example:{p}/",
                  f"http://127.0.0.1%2e:{p}/img.png", f"http://%31%32%37.0.0.1:{p}/img.png",
                  f" http://127.0.0.1:{p}/img.png", f"http://127.0.0.1:{p}/img.png\r\nX: y",
                  f"http://127.0.0.1\t:{p}/", "http://[::ffff:127.0.0.1/", "http:///img.png", "http://",
                  "http://" + "a" * 5000 + ".com/"]
        fetcher = Fetcher(settings())
        for url in tricks:
            await refused(fetcher, url)
        assert listener.connections == 0 and attempts == []


async def test_case12_schemes_and_paths_refused(attempts: list[str], tmp_path: object) -> None:
    fetcher = Fetcher(settings())
    for url in ["file:///etc/passwd", "FILE:///etc/passwd", "ftp://example.com/a.png", "gopher://x/",
                "dict://127.0.0.1:11211/", "/etc/passwd", "../../etc/passwd", "C:/Windows/win.ini",
                "data:image/png;base64,AAAA", "javascript:alert(1)"]:
        await refused(fetcher, url, FetchRefused, "http")
    assert attempts == []
    # local paths only from the operator-set folder
    from pathlib import Path

    root = Path(str(tmp_path)) / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(GOOD)
    s = Settings(images={"local_image_dir": str(root), "max_pixels": 1280 * 1024})
    assert await imgs.read_ref(ImageRef("path", str(root / "ok.png"), "image"), s) == GOOD
    for outside in [str(root / ".." / "x.png"), "/etc/passwd", str(root) + "/../../etc/passwd"]:
        with pytest.raises(FetchRefused) as info:
            await imgs.read_ref(ImageRef("path", outside, "image"), s)
        assert_clean(info.value, "image folder")


# --- cases 13-15: slow, huge, wrong, failing upstreams -----------------------------------------------
async def test_case13_trickle_and_silence_fail_within_timeout() -> None:
    async with FakeHost(routes={"/trickle": trickle, "/silent": silent}) as server:
        fetcher = Fetcher(settings(timeout_s=1.0), trusted=trust(server))
        for path in ["/trickle", "/silent"]:
            t0 = time.perf_counter()
            err = await refused(fetcher, server.url(path), FetchFailed, "within 1 s")
            assert err.status == 504
            assert time.perf_counter() - t0 < 4.0  # 1 s timeout + slack for a loaded box


async def test_case14_size_cap_and_wrong_content() -> None:
    import tracemalloc

    async with FakeHost(routes={
        "/huge": b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5000000000\r\n\r\n",
        "/endless": endless, "/gzip-bomb": gzip_bomb(64), "/html": response("200 OK", b"<html></html>", "text/html"),
        "/no-type": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        "/gzip-ok": response("200 OK", __import__("gzip").compress(GOOD), extra="Content-Encoding: gzip\r\n"),
        "/br": response("200 OK", GOOD, extra="Content-Encoding: br\r\n"),
    }) as server:
        fetcher = Fetcher(settings(max_bytes=1_000_000), trusted=trust(server))
        t0 = time.perf_counter()
        err = await refused(fetcher, server.url("/huge"), PayloadTooLarge, "1,000,000 byte limit")
        assert err.status == 413 and time.perf_counter() - t0 < 3.0  # refused on the header, 5 GB never read
        await refused(fetcher, server.url("/endless"), PayloadTooLarge, "limit")
        tracemalloc.start()
        await refused(fetcher, server.url("/gzip-bomb"), PayloadTooLarge, "limit")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 8 * 1024 * 1024  # 64 MB of zeros never inflated past the 1 MB cap
        err = await refused(fetcher, server.url("/html"), UnsupportedFormat, "text/html", "not an image")
        assert err.status == 415
        await refused(fetcher, server.url("/no-type"), UnsupportedFormat, "no content type")
        await refused(fetcher, server.url("/br"), FetchFailed, "encoding")
        assert await fetch(fetcher, server.url("/gzip-ok")) == GOOD


async def test_case15_upstream_errors_map_to_4xx_and_5xx() -> None:
    async with FakeHost(routes={"/404": response("404 Not Found internal-db-7.corp", b"", "text/plain"),
                                "/403": response("403 Forbidden", b"", "text/plain"),
                                "/500": response("500 Internal Server Error", b"", "text/plain"),
                                "/img.png": response("200 OK", GOOD)}) as server:
        fetcher = Fetcher(settings(), trusted=trust(server))
        for path, status in [("/404", 400), ("/403", 400)]:
            err = await refused(fetcher, server.url(path), FetchFailed, path[1:], "check")
            assert err.status == status and err.type == "invalid_request_error"
            assert "internal-db" not in err.message
        err = await refused(fetcher, server.url("/500"), FetchFailed, "500")
        assert err.status == 502

        async def no_dns(host: str, port: int) -> list[str]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        err = await refused(Fetcher(settings(), resolver=no_dns), "http://nowhere.invalid/a.png", FetchFailed,
                            "resolved")
        assert err.status == 502
        with socket.socket() as s:  # a port with nobody listening: connection refused -> 502
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        err = await refused(Fetcher(settings(), trusted=lambda h, ip, p: p == closed),
                            f"http://127.0.0.1:{closed}/a.png", FetchFailed, "could not download")
        assert err.status == 502
        assert await fetch(fetcher, server.url("/img.png")) == GOOD


# --- cases 1-5 by URL --------------------------------------------------------------------------------
BY_URL = [("/bomb.png", png_bomb(12_000, 12_000), ImageTooLarge), ("/garbage.png", b"garbage" * 50, InvalidImage),
          ("/half.png", GOOD[: len(GOOD) // 2], InvalidImage), ("/doc.pdf", encoded("PDF"), UnsupportedFormat),
          ("/strip.png", png_bomb(1, 100_000), InvalidImage)]


async def test_cases1to5_by_url() -> None:
    routes: dict[str, object] = {path: response("200 OK", body) for path, body, _ in BY_URL}
    routes["/anim.gif"] = response("200 OK", gif_frames(5000), "image/gif")
    routes["/img.png"] = response("200 OK", GOOD)
    async with FakeHost(routes=routes) as server:  # type: ignore[arg-type]
        s = settings()
        fetcher = Fetcher(s, trusted=trust(server))

        async def load(path: str) -> object:
            data = await imgs.read_ref(ImageRef("url", server.url(path), NAME), s, fetcher)
            return imgs.normalize(data, 256 * 1024, 1280 * 1024, 64_000_000, NAME)

        for path, _, error in BY_URL:
            with pytest.raises(error) as info:
                await load(path)
            assert_clean(info.value, NAME)
        assert (await load("/anim.gif")).original_size == (4, 4)  # type: ignore[attr-defined]
        assert (await load("/img.png")).width % 32 == 0  # type: ignore[attr-defined]


# --- https: the socket goes to the checked IP, TLS still verifies the host name ----------------------
async def test_https_connects_to_the_checked_ip_and_verifies_the_host_name(tmp_path: object) -> None:
    import asyncio
    import ssl
    import subprocess
    from pathlib import Path

    d = Path(str(tmp_path))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "1",
                    "-subj", "/CN=catalogue.test", "-addext", "subjectAltName=DNS:catalogue.test"],
                   check=True, capture_output=True, timeout=30)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(d / "cert.pem", d / "key.pem")
    sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment,misc,return-value]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response("200 OK", GOOD))
            await writer.drain()
        except Exception:  # noqa: BLE001 - a refused handshake ends here
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    try:
        async def resolver(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        client_tls = ssl.create_default_context(cafile=str(d / "cert.pem"))
        fetcher = Fetcher(settings(), resolver=resolver, tls=client_tls,
                          trusted=lambda host, ip, p: str(ip) == "127.0.0.1" and p == port)
        assert await fetch(fetcher, f"https://catalogue.test:{port}/img.png") == GOOD
        assert sni[-1] == "catalogue.test"  # SNI is the host name, not the IP we connected to
        # a host name the certificate does not cover fails verification: 502, no internals
        err = await refused(fetcher, f"https://other.test:{port}/img.png", FetchFailed, "could not download")
        assert err.status == 502
    finally:
        server.close()
