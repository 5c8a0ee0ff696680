"""`POST /v1/vqa`'s multipart form as one model: it validates the form and /openapi.json describes it.

The route (routes_vqa.py) reads the form into text values and `Upload`s, refusing oversized forms and
repeated fields, and validates it with `VQAForm`: a refusal is the same 400 naming the field as the
chat route's. Form values are text, so numbers are parsed from it (an empty one is refused: leave the
field out). `max_tokens`, `temperature` and `seed` are the chat request's own fields (sampling.py): the
two routes share their ranges, their wording and `generation_params`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from vqaserve.engines.structured import schema_from_text
from vqaserve.errors import InvalidRequest
from vqaserve.server.sampling import GenerationFields, MaxTokens, Seed, Temperature
from vqaserve.server.validation import Problem


@dataclass(frozen=True)
class Upload:
    """A file part of the form."""

    data: bytes
    filename: str | None = None


FILE = WithJsonSchema({"type": "string", "format": "binary"})
_MISSING = {
    "image": "image is missing; attach the photo as a file field named image (curl -F image=@photo.jpg)",
    "question": "question is missing or empty; add -F question='What is this?'",
}


class VQAForm(BaseModel):
    """One photo and one question (the form's fields)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)

    image: Annotated[Upload, FILE] = Field(description=(
        "the photo as a file: JPEG, PNG, WEBP, BMP, GIF, HEIC/HEIF or AVIF"))
    question: str = Field(pattern=r"\S", description="the question (not blank)")
    model: str | None = Field(None, description="the base model or a LoRA adapter name (GET /v1/models)")
    max_tokens: MaxTokens = None
    temperature: Temperature = None
    seed: Seed = None
    # A JSON part (openapi.py gives it Content-Type application/json), sent as text or as a file
    # (curl -F schema=@attributes.schema.json); canonical JSON once validated.
    schema_: Annotated[str, WithJsonSchema({"type": "object"})] = Field("", alias="schema", description=(
        "a JSON Schema object, as JSON text or a JSON file: the answer is JSON following it (at most 16 KB "
        "as compact JSON and 64 properties in all)"))

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        if isinstance(data, dict):
            names = [f.alias or name for name, f in cls.model_fields.items()]
            for name in sorted(data.keys() - set(names)):  # before what is missing: a typo explains both
                raise Problem(f"unknown form field {name!r}; accepted: {', '.join(names)}", at=name)
            for name, why in _MISSING.items():
                value = data.get(name)
                if value is None or (isinstance(value, str) and name == "question" and not value.strip()):
                    raise Problem(why, at=name)
        return data

    @field_validator("image", mode="before")
    @classmethod
    def _a_file(cls, value: Any) -> Any:
        if not isinstance(value, Upload):
            raise Problem("image must be a file upload (curl -F image=@photo.jpg), not text")
        return value

    @field_validator("question", "model", "max_tokens", "temperature", "seed", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, Upload):
            raise Problem("must be a text field, not a file")
        return value

    @field_validator("schema_", mode="before")
    @classmethod
    def _schema(cls, value: Any) -> str:
        if isinstance(value, Upload):
            try:
                value = value.data.decode("utf-8")
            except UnicodeDecodeError:
                raise Problem("schema must be UTF-8 JSON") from None
        if not isinstance(value, str) or not value.strip():
            return ""
        try:
            return schema_from_text(value, "schema")
        except InvalidRequest as exc:
            raise Problem(exc.message) from None

    def generation(self) -> GenerationFields:
        """The form's generation fields, as the chat request has them (already validated)."""
        return GenerationFields.model_construct(max_tokens=self.max_tokens, temperature=self.temperature,
                                                seed=self.seed)
