"""Settings tell the truth: every setting has a documented VQA_* name, the docs table is the code's,
unknown VQA_* variables are refused with the closest name, and a bad value is one line naming the fix."""

from __future__ import annotations

import re
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, subprocess_env, vqa_cmd
from vqaserve.errors import ConfigError
from vqaserve.settings import (
    FLAT,
    FOREIGN_NAMES,
    FOREIGN_PREFIXES,
    Settings,
    env_names,
    load_settings,
    settings_table,
)

pytestmark = pytest.mark.unit

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
REGENERATE = ("regenerate it: .venv/bin/python -c 'from vqaserve.settings import settings_table; "
              "print(settings_table(), end=\"\")' and paste it between the markers in docs/operations.md")


def all_fields() -> list[tuple[str, str, Any]]:
    return [(group, fld, info) for group, ginfo in Settings.model_fields.items()
            for fld, info in typing.cast(Any, ginfo.annotation).model_fields.items()]


def test_the_docs_table_is_the_code() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    assert START in text and END in text, "docs/operations.md lost its settings-table markers"
    documented = text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert documented == settings_table(), REGENERATE


def test_every_setting_has_a_row_with_a_meaning() -> None:
    fields = all_fields()
    assert all(info.description for _, _, info in fields)
    assert len(settings_table().splitlines()) == 2 + len(fields)


def sample(group: str, fld: str, info: Any, tmp_path: Path) -> tuple[str, Any]:
    """A valid value other than the default, as text for the environment and as Settings holds it."""
    special: dict[str, tuple[str, Any]] = {
        "engine": ("upstream", "upstream"), "upstream_image_format": ("png", "png"),
        "adapters": ("a=/x, b=/y", {"a": "/x", "b": "/y"}), "image": ("off", "off"),
        "forwarded_allow_ips": ("10.0.0.1, 172.30.0.0/24", ["10.0.0.1", "172.30.0.0/24"]),
        "url": ("sqlite:///var/lib/vqa/capture.db", "sqlite:///var/lib/vqa/capture.db"),
        "sample": ("0.25", 0.25), "review_below": ("0.3", 0.3),
    }
    if fld in special:
        return special[fld]
    if fld in ("api_keys_file", "admin_keys_file"):
        (tmp_path / "keys").write_text("k\n")
        return str(tmp_path / "keys"), str(tmp_path / "keys")
    default = info.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    if isinstance(default, list):
        return "a, b", ["a", "b"]
    return "some-value", "some-value"


@pytest.mark.parametrize(("group", "fld"), [(g, f) for g, f, _ in all_fields()])
def test_every_setting_is_read_from_its_documented_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         group: str, fld: str) -> None:
    info = typing.cast(Any, Settings.model_fields[group].annotation).model_fields[fld]
    text, value = sample(group, fld, info, tmp_path)
    names = [name for name, where in env_names().items() if where == (group, fld)]
    assert f"VQA_{group.upper()}__{fld.upper()}" in names
    for name in names:
        monkeypatch.setenv(name, text)
        got = getattr(getattr(load_settings(), group), fld)
        assert got == value or (fld in ("api_keys_file", "admin_keys_file") and got == text), name
        monkeypatch.delenv(name)


def test_vqa_temperature_is_read() -> None:
    assert FLAT["temperature"] == ("generation", "temperature")
    assert load_settings(temperature="0.5").generation.temperature == 0.5


def test_vqa_temperature_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQA_TEMPERATURE", "0.5")
    assert load_settings().generation.temperature == 0.5


@pytest.mark.parametrize(("typo", "meant"), [
    ("VQA_REDIS_ULR", "VQA_REDIS_URL"), ("VQA_MAXPIXELS", "VQA_MAX_PIXELS"),
    ("VQA_CACHE__ENABLD", "VQA_CACHE__ENABLED"), ("VQA_FORWARDED_ALLOWED_IPS", "VQA_FORWARDED_ALLOW_IPS"),
])
def test_unknown_variables_are_refused_with_the_closest_name(monkeypatch: pytest.MonkeyPatch, typo: str,
                                                             meant: str) -> None:
    monkeypatch.setenv(typo, "x")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert typo in err.value.message and f"did you mean {meant}?" in err.value.message
    assert "\n" not in err.value.message


@pytest.mark.parametrize("name", ["VQA_VLLM_VENV", "VQA_VLLM_MAX_MODEL_LEN", "VQA_VLLM_MAX_LORA_RANK",
                                  "VQA_TEST_ANYTHING", "VQA_ADMIN_KEY"])
def test_variables_of_the_scripts_and_tests_are_not_settings_and_not_refused(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    assert name.startswith(FOREIGN_PREFIXES) or name in FOREIGN_NAMES
    monkeypatch.setenv(name, "1")
    load_settings()


@pytest.mark.parametrize(("env", "expected"), [
    ({"VQA_PORT": "eighty"}, "VQA_PORT='eighty' is not a whole number; set e.g. VQA_PORT=8000 (the default)"),
    ({"VQA_SERVER__PORT": "x"}, "VQA_SERVER__PORT='x' is not a whole number"),
    ({"VQA_ENGINE": "vllm"}, "VQA_ENGINE='vllm' is not allowed; use one of 'transformers', 'upstream' or "
                             "'scripted'"),
    ({"VQA_CACHE__ENABLED": "nah"}, "VQA_CACHE__ENABLED='nah' is not true or false; set e.g. "
                                    "VQA_CACHE__ENABLED=true"),
    ({"VQA_TEMPERATURE": "-1"}, "VQA_TEMPERATURE must be a finite number >= 0"),
    ({"VQA_DECODED_MEMO": "-1"}, "VQA_DECODED_MEMO='-1': input should be greater than or equal to 0; fix "
                                 "VQA_DECODED_MEMO"),
    ({"VQA_FORWARDED_ALLOW_IPS": "nginx"}, "VQA_FORWARDED_ALLOW_IPS: 'nginx' is not an IP address or network"),
    ({"VQA_ADAPTERS": "noequals"}, "VQA_ADAPTERS='noequals': adapter 'noequals' must look like NAME=PATH"),
    ({"VQA_CAPTURE_URL": "mysql://u:secret@db/vqa"}, "VQA_CAPTURE_URL: 'mysql://u:***@db/vqa' is not a capture "
                                                     "database; use sqlite:///PATH"),
    ({"VQA_CAPTURE_URL": "postgresql://u:secret@db:99999/vqa"}, "VQA_CAPTURE_URL: 'postgresql://u:***@db:99999/vqa' "
                                                                "is not a valid URL; use sqlite:///PATH"),
    ({"VQA_CAPTURE_URL": "sqlite:///"}, "VQA_CAPTURE_URL: 'sqlite:///' names no database file"),
    ({"VQA_CAPTURE_SAMPLE": "1.5"}, "VQA_CAPTURE_SAMPLE must be a number from 0 to 1"),
    ({"VQA_REVIEW_BELOW": "-0.1"}, "VQA_REVIEW_BELOW must be a number from 0 to 1"),
    ({"VQA_CAPTURE_RETENTION_DAYS": "-1"}, "VQA_CAPTURE_RETENTION_DAYS must be >= 0"),
])
def test_a_bad_value_is_one_line_naming_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                                  env: dict[str, str], expected: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.message.startswith(expected) and "\n" not in err.value.message


def test_a_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--port 'many' is not a whole number; pass e.g. --port 8000"):
        load_settings(port="many")


# Placeholders in prose and help texts, not variables: VQA_NAME=VALUE, VQA_GROUP__FIELD, VQA_FETCH__*, ...
PLACEHOLDERS = {"VQA_NAME", "VQA_X", "VQA_GROUP", "VQA_GROUP__FIELD", "VQA_FETCH", "VQA_TEST", "VQA_VLLM",
                "VQA_REALSIZE"}


def test_every_vqa_name_in_the_repo_is_a_setting() -> None:
    known = set(env_names())
    patterns = ["README.md", "Makefile", "docs/**/*.md", "deploy/**/*", "scripts/**/*", "src/vqaserve/**/*.py",
                "tests/**/*.py"]
    wrong: dict[str, set[str]] = {}
    for pattern in patterns:
        for path in REPO.glob(pattern):
            if not path.is_file() or path.name == Path(__file__).name:
                continue
            for name in re.findall(r"\bVQA_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="ignore")):
                if (name not in known and name not in PLACEHOLDERS and not name.startswith(FOREIGN_PREFIXES)
                        and name not in FOREIGN_NAMES):
                    wrong.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert not wrong, f"VQA_* names that no setting reads: {wrong}"


def serve(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vqa_cmd("serve", "--engine", "scripted"), env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("env", "needle"), [
    ({"VQA_REDIS_ULR": "redis://r:6379/0"}, "unknown setting VQA_REDIS_ULR: did you mean VQA_REDIS_URL?"),
    ({"VQA_PORT": "eighty"}, "VQA_PORT='eighty' is not a whole number"),
    ({"VQA_CAPTURE_URL": "mysql://u:pw@db/x"}, "VQA_CAPTURE_URL: 'mysql://u:***@db/x' is not a capture database; "
                                               "use sqlite:///PATH"),
])
def test_vqa_serve_refuses_a_bad_setting_in_one_line_and_exits_2(env: dict[str, str], needle: str) -> None:
    done = serve(**env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqa: error: ") and needle in lines[0], done.stderr
