"""`vqa serve --workers N`: which engines may run several workers."""

from __future__ import annotations

import pytest

from vqaserve.errors import ConfigError
from vqaserve.server.replicas import check_workers
from vqaserve.settings import load_settings

pytestmark = pytest.mark.unit


def test_in_process_engine_refuses_several_workers_and_says_why() -> None:
    with pytest.raises(ConfigError) as err:
        check_workers(load_settings(workers=4))
    assert "one model per process" in err.value.message and "--engine upstream" in err.value.message
    assert check_workers(load_settings(workers=1)) == []
    with pytest.raises(ConfigError, match="at least 1"):
        check_workers(load_settings(workers=0))


def test_upstream_engine_may_run_several_workers_and_is_told_to_share_redis() -> None:
    advice = check_workers(load_settings(workers=4, engine="upstream", upstream_url="http://h:1/v1"))
    assert any("VQA_REDIS_URL" in line for line in advice)
    shared = load_settings(workers=4, engine="upstream", upstream_url="http://h:1/v1",
                           redis_url="redis://127.0.0.1:6379/0")
    assert check_workers(shared) == []


def test_vqa_serve_refuses_workers_for_the_in_process_engine_before_starting(
        capsys: pytest.CaptureFixture[str]) -> None:
    from vqaserve.cli import main

    assert main(["serve", "--workers", "3", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one model per process" in err and "Traceback" not in err
