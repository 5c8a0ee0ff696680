"""From a request model's ValidationError to the API's 400: one message naming the field and the fix.

The request bodies are pydantic models (chat_request.py, vqa_form.py) that validate and document at
once. Whatever they refuse reaches `invalid_request()` as pydantic's error list; the first error
becomes an `InvalidRequest` whose `param` is the field (`messages[0].content[1].image_url`). Three
kinds of error come out of the models:

- a value outside what a field allows, where the field carries `says(...)`: "min_p must be between
  0 and 1 (0 = off)" (the same words the schema's description gives);
- a rule a validator checks: it raises `Problem(text, at=...)`, `at` relative to the model;
- anything else, as pydantic words it ("stream: Input should be a valid boolean").

Unions in the models are tagged (`Discriminator` + `Tag`), so an error reports the branch that fits
the input, not one per branch; the tags hold a space, which is how `param_of` tells them from field
names in a location. A discriminator whose tag field holds an unknown value reports the custom error
type `no_such_<field>` (pydantic cannot attach a location to it), read back here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from vqaserve.errors import InvalidRequest

# Errors that mean "the value is of the right type but outside what the field allows".
_OUT_OF_BOUNDS = frozenset({
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "too_short",
    "too_long", "string_too_short", "string_too_long", "literal_error", "string_pattern_mismatch"})
_NO_SUCH = "no_such_"


class Problem(ValueError):
    """A validator's refusal: `text` names the fix, `at` is where (relative to the model raising it)."""

    def __init__(self, text: str, at: str = "") -> None:
        super().__init__(text)
        self.text, self.at = text, at


@dataclass(frozen=True)
class says:  # noqa: N801 - used like pydantic's lower-case field markers
    """Field metadata: a value outside the field's bounds is refused as "<param> must be <rule>", and
    the schema's description of the field is `rule`, so the document and the refusal say the same.

    `note` adds to the description what the refusal need not repeat. Errors inside nested models keep
    their own place and words, unless `every_error`: then every error in the field is refused this way
    (for small shapes such as `image_url`, where one sentence says what to send).
    """

    rule: str
    note: str = ""
    every_error: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "description": f"{self.rule}; {self.note}" if self.note else self.rule}

    def _check(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if self.every_error or any(e["type"] in _OUT_OF_BOUNDS and _in_field(e["loc"]) for e in exc.errors()):
                raise PydanticCustomError("field_rule", "must be {rule}", {"rule": self.rule}) from None
            raise


def _in_field(loc: Sequence[str | int]) -> bool:
    """The error is about the field's own value (or an item or union branch of it), not a nested model's field."""
    return all(isinstance(part, int) or " " in part for part in loc)


def integral(value: Any) -> Any:
    """JSON Schema's integer includes 2.0; pydantic's strict int does not: pass such floats as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integral = BeforeValidator(integral)


def no_such(field: str) -> str:
    """The custom error type of a discriminator reading `field` (see the module docstring)."""
    return _NO_SUCH + field


def loc_param(loc: Sequence[str | int]) -> str:
    """pydantic's location -> `messages[0].content[1].image_url` (union tags, holding a space, left out)."""
    param = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif " " not in part:
            param += f".{part}" if param else part
    return param


def join(param: str, at: str) -> str:
    if not at:
        return param
    if not param:
        return at
    return param + at if at.startswith("[") else f"{param}.{at}"


def invalid_request(errors: Sequence[Mapping[str, Any]],
                    strip: Callable[[Sequence[str | int]], Sequence[str | int]] = lambda loc: loc) -> InvalidRequest:
    """The first of pydantic's errors as the API's 400 (`strip` drops FastAPI's "body" from locations)."""
    if not errors:
        return InvalidRequest("the request is not valid; check it against /openapi.json", param="body")
    error = errors[0]
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    param = loc_param(strip(error.get("loc", ())))
    cause = ctx.get("error")
    if isinstance(cause, Problem):
        param = join(param, cause.at) or "body"
        text = cause.text
        return InvalidRequest(text if param in text else f"{param}: {text}", param=param)
    if kind == "extra_forbidden":  # the unknown name itself, even one a tag would be taken for
        param = join(loc_param(strip(error["loc"])[:-1]), str(error["loc"][-1]))
        return InvalidRequest(f"unknown field {param!r}; remove it (the API documentation lists the accepted "
                              "fields)", param=param)
    if kind.startswith(_NO_SUCH):
        param = join(param, kind.removeprefix(_NO_SUCH))
    param = param or "body"
    if kind == "field_rule":
        return InvalidRequest(f"{param} must be {ctx['rule']}", param=param)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return InvalidRequest(f"{param} must be a JSON object", param=param)
    if kind == "missing":
        return InvalidRequest(f"{param} is missing; add it", param=param)
    return InvalidRequest(f"{param}: {error.get('msg', 'invalid value')}", param=param)


def validate(model: Any, data: Any) -> Any:
    """`model.model_validate(data)`, with a refusal as the API's 400 (for bodies FastAPI does not parse)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from None

