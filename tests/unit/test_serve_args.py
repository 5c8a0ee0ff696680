"""`vqa serve` flags: one per public VQA_* setting, folded into the same Settings as the env vars."""

from __future__ import annotations

from pathlib import Path

import pytest

from vqaserve.cli import build_parser
from vqaserve.cli.serve import settings_from_args
from vqaserve.errors import ConfigError
from vqaserve.settings import FLAT

pytestmark = pytest.mark.unit


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_every_public_setting_is_a_flag() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for name in FLAT:
        assert "--" + name.replace("_", "-") in help_text


def test_flags_fill_the_nested_settings() -> None:
    s = parse("--port", "9123", "--max-pixels", "500000", "--fetch-allow-private", "--max-images", "3",
              "--adapter", "sunglasses=/models/sg", "--adapter", "shoes=/models/sh", "--engine", "scripted")
    assert s.server.port == 9123 and s.images.max_pixels == 500000 and s.images.max_images == 3
    assert s.fetch.allow_private is True and s.llm.engine == "scripted"
    assert s.llm.adapters == {"sunglasses": "/models/sg", "shoes": "/models/sh"}


def test_flags_win_over_env_and_env_still_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQA_PORT", "7000")
    monkeypatch.setenv("VQA_MAX_IMAGES", "5")
    s = parse("--port", "7001")
    assert s.server.port == 7001 and s.images.max_images == 5


def test_adapter_flags_add_to_the_env_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQA_ADAPTERS", "a=/x")
    assert parse("--adapter", "b=/y").llm.adapters == {"a": "/x", "b": "/y"}


@pytest.mark.parametrize("argv", [("--adapter", "no-path"), ("--port", "many"), ("--max-pixels", "10")])
def test_bad_flags_are_one_line_config_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        parse(*argv)
    assert "\n" not in err.value.message


def test_a_bare_adapter_name_means_a_bundled_adapter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vqaserve import settings as settings_module

    (tmp_path / "sunglasses").mkdir()
    monkeypatch.setattr(settings_module, "BUNDLED_MODELS", tmp_path)
    assert parse("--adapter", "sunglasses").llm.adapters == {"sunglasses": str(tmp_path / "sunglasses")}
