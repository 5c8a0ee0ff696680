"""Structured output: response_format parsing and checks, and JSON-schema constrained decoding.

A request's schema travels as canonical JSON text (GenerationParams.json_schema) so it can enter the
cache key and stay hashable. In process, xgrammar (the library vLLM uses) compiles each schema once
per tokenizer (small LRU) and `RowGrammars` masks the logits of every row that has one, each with
its own GrammarMatcher, so rows with different schemas, or none, share one batched generate().
xgrammar and torch are imported only when a schema is compiled.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from vqaserve.bounded_lru import BoundedLRU
from vqaserve.errors import InvalidRequest

MAX_SCHEMA_BYTES = 16 * 1024  # canonical JSON
MAX_PROPERTIES = 64  # all nesting levels together
MAX_DEPTH = 16
# {"type": "json_object"}: any JSON object. additionalProperties is spelled out because a strict
# compiler (xgrammar's default, as OpenAI's strict mode) would otherwise allow only {}.
JSON_OBJECT_SCHEMA = '{"type":"object","additionalProperties":true}'
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_PARAM = "response_format"
_LOG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)?\S+\.\w+:\d+:\s*")


def canonical(schema: Any) -> str:
    """One spelling of a schema: no spaces, keys in the client's order (property order is the order
    the answer's keys come in, so it is part of the schema)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def parse_response_format(value: Any) -> str:
    """An OpenAI response_format -> canonical schema JSON ("" for plain text)."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise InvalidRequest("response_format must be an object such as {\"type\": \"json_object\"}",
                             param=_PARAM)
    kind = value.get("type", "text")
    if kind == "text":
        return ""
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    if kind != "json_schema":
        raise InvalidRequest(f"response_format type {kind!r} is not supported; use 'text', "
                             "'json_object' or 'json_schema'", param=_PARAM)
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise InvalidRequest("response_format json_schema needs {\"name\": ..., \"schema\": {...}}: "
                             "put the JSON Schema object under json_schema.schema", param=_PARAM)
    if spec.get("strict") not in (None, True, False):
        raise InvalidRequest("response_format json_schema.strict must be true or false", param=_PARAM)
    return check_schema(spec["schema"])


def schema_from_text(text: str, param: str) -> str:
    """A JSON Schema given as text (a form field, a file) -> canonical schema JSON."""
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{param} is not valid JSON ({exc.msg} at line {exc.lineno}); give a JSON "
                             "Schema object such as {\"type\": \"object\", \"properties\": {...}}",
                             param=param) from None
    return check_schema(schema, param)


def check_schema(schema: Any, param: str = _PARAM) -> str:
    """Structural checks (a JSON Schema object, within the size limits) -> canonical JSON."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param}: the schema must be a JSON Schema object such as "
                             "{\"type\": \"object\", \"properties\": {...}}", param=param)
    text = canonical(schema)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"{param}: the schema is {len(text.encode())} bytes as compact JSON; the "
                             f"limit is {MAX_SCHEMA_BYTES}: shorten descriptions or split the request",
                             param=param)
    count = _walk(schema, "schema", 0, param)
    if count > MAX_PROPERTIES:
        raise InvalidRequest(f"{param}: the schema has {count} properties; the limit is {MAX_PROPERTIES} "
                             "in all: ask for fewer attributes per request", param=param)
    return text


def _walk(node: Any, where: str, depth: int, param: str) -> int:
    """Checks one subschema and its children; returns the number of properties below it."""
    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"{param}: {where} {why}", param=param)

    if isinstance(node, bool):
        return 0  # true / false are schemas too
    if not isinstance(node, dict):
        raise bad("must be a schema object")
    if depth > MAX_DEPTH:
        raise bad(f"nests deeper than {MAX_DEPTH} levels; flatten the schema")
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if any(k not in _TYPES for k in kinds):
        raise bad(f"has type {kind!r}; use one of {', '.join(sorted(_TYPES))}")
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise bad("has an enum that is not a non-empty list")
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise bad("has a 'required' that is not a list of property names")
    count = 0
    props = node.get("properties", {})
    if not isinstance(props, dict):
        raise bad("has 'properties' that is not an object of schemas")
    for name, sub in props.items():
        count += 1 + _walk(sub, f"{where}.properties.{name}", depth + 1, param)
    for key in ("items", "additionalProperties", "not"):
        if key in node:
            count += _walk(node[key], f"{where}.{key}", depth + 1, param)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if key in node:
            if not isinstance(node[key], list):
                raise bad(f"has '{key}' that is not a list of schemas")
            for i, sub in enumerate(node[key]):
                count += _walk(sub, f"{where}.{key}[{i}]", depth + 1, param)
    for key in ("$defs", "definitions"):
        for name, sub in (node.get(key) or {}).items():
            count += _walk(sub, f"{where}.{key}.{name}", depth + 1, param)
    return count


def response_format_body(schema_json: str) -> dict[str, Any]:
    """Canonical schema JSON -> the response_format an OpenAI-compatible server (vLLM) takes."""
    if schema_json == JSON_OBJECT_SCHEMA:
        return {"type": "json_object"}
    return {"type": "json_schema",
            "json_schema": {"name": "response", "schema": json.loads(schema_json), "strict": True}}


def compile_reason(exc: BaseException) -> str:
    """xgrammar's message without its "[time] /path/file.cc:83: " prefix (no paths to clients)."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return _LOG_PREFIX.sub("", lines[0])[:160]


class GrammarCache:
    """Compiles schemas for one tokenizer, once each (LRU of `capacity` grammars and `max_bytes`: with
    a 150k vocabulary a grammar's token-mask cache takes megabytes); thread-safe.

    The tokenizer's xgrammar description is built on first use: a model never asked for JSON never
    pays for it (about a second for a 150k vocabulary).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int], capacity: int = 32,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self._tokenizer, self._vocab_size, self._stop_ids = tokenizer, vocab_size, list(stop_ids)
        self._compiler: Any = None
        # keep_newest: a grammar over the byte budget is still the one this request needs.
        self._cache: BoundedLRU[str, Any] = BoundedLRU(capacity, max_bytes=max_bytes, keep_newest=True,
                                                       size=lambda _, grammar: grammar.memory_size_bytes)
        self._lock = threading.Lock()
        self.compiled = 0  # how many compilations ran (tests check the cache)

    def _get_compiler(self) -> Any:
        if self._compiler is None:
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size,
                                                      stop_token_ids=self._stop_ids or None)
            self._compiler = xgr.GrammarCompiler(info, cache_enabled=False)  # our LRU is the cache
        return self._compiler

    def compile(self, schema_json: str) -> Any:
        with self._lock:
            hit = self._cache.get(schema_json)
            if hit is not None:
                return hit
            compiler = self._get_compiler()
            try:
                # Compact separators: free whitespace lets a small model wander in blanks.
                grammar = compiler.compile_json_schema(schema_json, any_whitespace=False, strict_mode=True)
            except Exception as exc:  # noqa: BLE001 - any compile failure is the schema's: a 400
                raise InvalidRequest(f"response_format: the schema uses something the decoder cannot "
                                     f"enforce ({compile_reason(exc)}); simplify the schema",
                                     param=_PARAM) from None
            self.compiled += 1
            self._cache.put(schema_json, grammar)
            return grammar

    def refusal(self, schema_json: str) -> InvalidRequest | None:
        """Compiles (and caches) a request's schema up front; the 400 if the decoder cannot enforce it."""
        if not schema_json:
            return None
        try:
            self.compile(schema_json)
        except InvalidRequest as exc:
            return exc
        return None

    def processor(self, schemas: Sequence[str]) -> RowGrammars | None:
        """A logits processor for rows with these schemas ("" = unconstrained); None if none has one."""
        if not any(schemas):
            return None
        return RowGrammars([self.compile(s) if s else None for s in schemas], self._vocab_size)


class RowGrammars:
    """A generate() logits processor: row i follows grammars[i], or is left alone when it is None.

    One instance per generate() call. A row whose grammar has ended (its JSON is complete) may
    only emit a stop token; a row that was ended by something else (length, stop string, cancel)
    and is now padded by generate() is left alone.
    """

    def __init__(self, grammars: Sequence[Any], vocab_size: int) -> None:
        import xgrammar as xgr

        self._matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self._rows = [i for i, m in enumerate(self._matchers) if m is not None]
        self._bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self._stop = [list(g.tokenizer_info.stop_token_ids) if g is not None else [] for g in grammars]
        self._started = False
        self._dead: set[int] = set()

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import xgrammar as xgr

        if self._started:
            last = input_ids[:, -1].tolist()  # one device sync per step, not one per row
            for i in self._rows:
                matcher = self._matchers[i]
                if i not in self._dead and matcher is not None and not matcher.is_terminated() \
                        and not matcher.accept_token(last[i]):
                    self._dead.add(i)  # padding after the row stopped for another reason
        self._started = True
        live = []
        for i in self._rows:
            matcher = self._matchers[i]
            if i in self._dead or matcher is None:
                continue
            if matcher.is_terminated():
                keep = scores[i, self._stop[i]].clone()
                scores[i, :] = float("-inf")
                scores[i, self._stop[i]] = keep
            else:
                matcher.fill_next_token_bitmask(self._bitmask, i)
                live.append(i)
        if live:
            device = scores.device
            target = scores if device.type in ("cuda", "cpu") else scores.cpu()
            xgr.apply_token_bitmask_inplace(target, self._bitmask.to(target.device), indices=live)
            if target is not scores:
                scores.copy_(target.to(device))
        return scores


def violation(value: Any, schema: Any, where: str = "$") -> str | None:
    """Where `value` breaks `schema`, or None. Covers type, enum, const, properties, required,
    additionalProperties, items, minItems/maxItems, uniqueItems: enough to check answers (tests,
    `vqa bench structured`) independently of the grammar that produced them."""
    if schema is True or schema == {}:
        return None
    if schema is False:
        return f"{where}: no value is allowed"
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    kind = "integer" if isinstance(value, int) and not isinstance(value, bool) else (
        "number" if isinstance(value, float) else names.get(type(value), "?"))
    wanted = schema.get("type")
    allowed = wanted if isinstance(wanted, list) else [wanted] if wanted else []
    if allowed and kind not in allowed and not (kind == "integer" and "number" in allowed):
        return f"{where}: {kind} is not {wanted}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{where}: {value!r} is not {schema['const']!r}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            return f"{where}: {missing[0]!r} is missing"
        for key, item in value.items():
            sub = props.get(key, schema.get("additionalProperties", True))
            found = violation(item, sub, f"{where}.{key}")
            if found:
                return found
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return f"{where}: {len(value)} items is outside minItems/maxItems"
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) < len(value):
            return f"{where}: items repeat"
        for i, item in enumerate(value):
            found = violation(item, schema.get("items", True), f"{where}[{i}]")
            if found:
                return found
    return None
