"""One Settings object, read from VQA_* environment variables (and `vqa serve` flags).

The documented flat names (VQA_MODEL, VQA_REDIS_URL, ...) are public contracts; they fill nested
groups so code reads `settings.cache.redis_url` or `settings.llm.model` (the group is "llm" because
VQA_MODEL is the flat name of the model); every field is also VQA_GROUP__FIELD. Each field's
description is its row in docs/operations.md (`settings_table()`), and a VQA_* variable that no
setting reads is refused (`check_environment`). Pass settings in; there is no module-level global.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vqaserve.settings.groups import (  # noqa: F401 - the groups are part of this module's API
    DEFAULT_MODEL,
    FLAT,
    PATCH,
    BatchSettings,
    CacheSettings,
    CaptureSettings,
    CommaList,
    FetchSettings,
    GenerationSettings,
    ImageSettings,
    ModelSettings,
    SafetySettings,
    ServerSettings,
    parse_adapters,
    public_name,
)

BUNDLED_MODELS = Path(__file__).parents[1] / "models"




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
    capture: CaptureSettings = Field(default_factory=CaptureSettings)

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
        s = self.server
        if s.api_keys_file:
            s.api_keys = [*s.api_keys, *_keys_in(s.api_keys_file, "VQA_API_KEYS_FILE")]
        if s.admin_keys_file:
            s.admin_keys = [*s.admin_keys, *_keys_in(s.admin_keys_file, "VQA_ADMIN_KEYS_FILE")]
        if set(s.admin_keys) & set(s.api_keys):
            raise ValueError("VQA_ADMIN_KEYS: a key is both an admin key and an API key; give the admin API "
                             "keys of its own (an API key must never grant admin)")
        return self


def _keys_in(path_text: str, name: str) -> list[str]:
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"{name} does not name a readable file; fix the path")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


# VQA_* variables that are not settings: read by scripts/vllm.sh (VQA_VLLM_VENV, ...), by tests and by the
# full-size runs (tests/realsize: VQA_REALSIZE_DIR, ...); VQA_ADMIN_KEY is the key `vqa adapter` sends to
# a server's admin API.
FOREIGN_PREFIXES = ("VQA_VLLM_", "VQA_TEST_", "VQA_REALSIZE_")
FOREIGN_NAMES = frozenset({"VQA_ADMIN_KEY"})


def _groups() -> dict[str, type[BaseModel]]:
    return {group: info.annotation for group, info in Settings.model_fields.items()}  # type: ignore[misc]


def env_names() -> dict[str, tuple[str, str]]:
    """Every VQA_* variable Settings reads -> (group, field): flat names and VQA_GROUP__FIELD."""
    names = {f"VQA_{group.upper()}__{fld.upper()}": (group, fld)
             for group, model in _groups().items() for fld in model.model_fields}
    names.update({f"VQA_{flat.upper()}": where for flat, where in FLAT.items()})
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a VQA_* variable that no setting reads (a typo would otherwise be ignored)."""
    import difflib

    from vqaserve.errors import ConfigError

    known = env_names()
    for key in sorted(environ):
        if (not key.upper().startswith("VQA_") or key in known or key.upper().startswith(FOREIGN_PREFIXES)
                or key.upper() in FOREIGN_NAMES):
            continue
        close = difflib.get_close_matches(key.upper(), list(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown setting {key}: {hint}(every VQA_* variable is listed in "
                          "docs/operations.md; unset it or fix the name)")


def _source(group: str, fld: str, overrides: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, str]:
    """(how the user wrote the setting, how to write the fix): `--port`/`--port N` or `VQA_PORT`/`VQA_PORT=N`."""
    flats = [flat for flat, where in FLAT.items() if where == (group, fld)]
    for flat in flats:
        if flat in overrides:
            return f"--{flat.replace('_', '-')}", f"--{flat.replace('_', '-')} "
    for flat in flats:
        if f"VQA_{flat.upper()}" in environ:
            return f"VQA_{flat.upper()}", f"VQA_{flat.upper()}="
    name = public_name(group, fld)
    nested = f"VQA_{group.upper()}__{fld.upper()}"
    if nested in environ:
        name = nested
    return name, f"{name}="


_KINDS = {"int_parsing": "a whole number", "int_from_float": "a whole number", "float_parsing": "a number",
          "bool_parsing": "true or false", "finite_number": "a finite number"}


def _one_line(error: Any, overrides: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """One pydantic error -> `VQA_PORT='eighty' is not a whole number; set e.g. VQA_PORT=8000 (the default)`."""
    loc = [str(x) for x in error.get("loc", ())]
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if len(loc) < 2 or msg.startswith("VQA_"):  # our own validators name the variables already
        return msg
    group, fld = loc[0], loc[1]
    model = _groups().get(group)
    if model is None or fld not in model.model_fields:
        return f"invalid setting {'.'.join(loc)}: {msg}"
    name, assign = _source(group, fld, overrides, environ)
    value = error.get("input")
    shown = f"{name}={value!r}" if not name.startswith("--") else f"{name} {value!r}"
    kind = error.get("type", "")
    info = model.model_fields[fld]
    default = info.get_default(call_default_factory=True)
    if kind == "literal_error":
        return f"{shown} is not allowed; use one of {error.get('ctx', {}).get('expected', '')}"
    if kind in _KINDS:
        verb = "pass" if name.startswith("--") else "set"
        example = f"e.g. {assign}{_plain(default)} (the default)" if default is not None else f"{name} to one"
        return f"{shown} is not {_KINDS[kind]}; {verb} {example}"
    fix = "" if "e.g." in msg else f"; fix {name} (see docs/operations.md)"
    return f"{shown}: {msg[:1].lower() + msg[1:]}{fix}"


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def settings_table() -> str:
    """The Markdown table of every setting (docs/operations.md, "All settings"; a test keeps it equal)."""
    rows = ["| env var | flag | default | meaning |", "|---|---|---|---|"]
    flags = {where: f"`--{flat.replace('_', '-')}`" for flat, where in FLAT.items()}
    for group, model in _groups().items():
        for fld, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            shown = "—" if default in (None, [], {}) else f"`{_plain(default)}`"
            rows.append(f"| `{public_name(group, fld)}` | {flags.get((group, fld), '—')} | {shown} | "
                        f"{info.description} |")
    return "\n".join(rows) + "\n"


def resolve_model_path(name: str) -> str:
    """A bundled model name ("shop-toy") -> its directory; anything else is returned unchanged."""
    bundled = BUNDLED_MODELS / name
    if "/" not in name and bundled.is_dir():
        return str(bundled)
    return name


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus explicit overrides (CLI flags); one-line errors."""
    import os

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from vqaserve.errors import ConfigError

    check_environment(os.environ)
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc.errors()[0], given, os.environ)) from None
    except SettingsError as exc:  # a VQA_GROUP value pydantic-settings could not parse
        raise ConfigError(f"{exc}; set each field as VQA_GROUP__FIELD (see docs/operations.md)") from None
