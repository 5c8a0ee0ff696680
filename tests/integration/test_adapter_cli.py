"""`vqa adapter load|unload|route|list` against live servers (the scripted engine), as an operator runs it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import subprocess_env, vqa_cmd
from tests.http_support import LiveServer, RecordingEngine, make_app

pytestmark = pytest.mark.integration
ADMIN = "cli-admin-key-0123"


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[LiveServer]]:
    servers = [LiveServer(make_app(RecordingEngine(model_id="shop-toy"), admin_keys=ADMIN)) for _ in range(2)]
    for server in servers:
        server.__enter__()
    yield servers
    for server in servers:
        server.__exit__()


def vqa(*args: str, key: str | None = ADMIN) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(**({"VQA_ADMIN_KEY": key} if key else {}))
    return subprocess.run(vqa_cmd("adapter", *args), env=env, capture_output=True, text=True, timeout=120)


def test_an_operator_puts_an_adapter_live_on_every_replica(replicas: list[LiveServer], tmp_path: Path) -> None:
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "adapter_model.safetensors").write_bytes(b"weights")
    urls = [arg for server in replicas for arg in ("--url", server.url)]
    done = vqa("load", "v2", str(tmp_path / "v2"), *urls)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(" v2 loaded as v2@" in line for line in lines)
    version = lines[0].rsplit(" ", 1)[1]
    assert lines[1].endswith(version)  # the same weights: the same version on both replicas

    done = vqa("route", "shop-toy", "--to", "v2:10", *urls)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{replicas[0].url}: requests for shop-toy: 10% -> v2, 90% -> shop-toy"
    listed = vqa("list", "--url", replicas[1].url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"{replicas[1].url}: base model shop-toy",
        f"  ADAPTER  VERSION{' ' * (len(version) - 7)}  STATE    IN FLIGHT  PATH",
        f"  v2       {version}  serving  0          {tmp_path / 'v2'}",
        "  route shop-toy: 10% -> v2"]

    refused = vqa("unload", "v2", *urls)  # a route still sends requests to it
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "--off" in refused.stderr
    assert vqa("route", "shop-toy", "--off", *urls).returncode == 0
    done = vqa("unload", "v2", *urls)
    assert done.returncode == 0, done.stderr
    assert "no adapters" in vqa("list", "--url", replicas[0].url).stdout


@pytest.mark.parametrize(("args", "key", "code", "says"), [
    (("list",), "wrong-key", 2, "invalid admin key"),
    (("list",), None, 2, "set VQA_ADMIN_KEY"),
    (("load", "v2", "/x", "--url", "http://127.0.0.1:9"), ADMIN, 1, "cannot reach http://127.0.0.1:9"),
    (("route", "shop-toy", "--to", "v2"), ADMIN, 2, "TARGET:PERCENT"),
    (("route", "shop-toy", "--to", "ghost:10"), ADMIN, 2, "'ghost' is not served"),
])
def test_cli_errors_are_one_line(replicas: list[LiveServer], args: tuple[str, ...], key: str | None, code: int,
                                 says: str) -> None:
    url = () if "--url" in args else ("--url", replicas[0].url)
    done = vqa(*args, *url, key=key)
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("vqa: error: ") and done.stderr.count("\n") == 1 and says in done.stderr
