"""docs/schema/frame.schema.json, checked: a minimal JSON Schema (2020-12)
validator for the keywords that schema uses (no new dependency).

``errors(frame)`` lists what is wrong with one decoded frame (empty: valid).
An unsupported keyword in the schema raises, so the schema cannot silently
use one this validator would skip.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "schema" / "frame.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description"}
_KNOWN = _ANNOTATIONS | {"type", "properties", "required", "additionalProperties", "items", "prefixItems",
                         "minItems", "enum", "const", "pattern", "minimum", "maximum", "minLength", "$ref",
                         "allOf", "anyOf", "oneOf", "not", "if", "then"}


def errors(value: Any, schema: dict[str, Any] | bool = SCHEMA, path: str = "$") -> list[str]:
    if schema is True:
        return []
    if schema is False:
        return [f"{path}: not allowed"]
    unknown = set(schema) - _KNOWN
    if unknown:
        raise ValueError(f"schema keyword(s) this validator does not check: {sorted(unknown)}")
    out: list[str] = []
    if "$ref" in schema:
        out += errors(value, _resolve(schema["$ref"]), path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return out + [f"{path}: {value!r} is not of type {types}"]
    if "const" in schema and not _same(value, schema["const"]):
        out.append(f"{path}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        out.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{path}: {value!r} does not match {schema['pattern']!r}")
        if len(value) < schema.get("minLength", 0):
            out.append(f"{path}: {value!r} is too short")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        out += _object(value, schema, path)
    if isinstance(value, list):
        out += _array(value, schema, path)
    for sub in schema.get("allOf", []):
        out += errors(value, sub, path)
    if "anyOf" in schema:
        found = [errors(value, sub, path) for sub in schema["anyOf"]]
        if all(found):
            out.append(f"{path}: matches none of anyOf; the closest: {min(found, key=len)[:3]}")
    if "oneOf" in schema:
        matched = sum(not errors(value, sub, path) for sub in schema["oneOf"])
        if matched != 1:
            out.append(f"{path}: matches {matched} of oneOf, not exactly one")
    if "not" in schema and not errors(value, schema["not"], path):
        out.append(f"{path}: matches a 'not'")
    if "if" in schema and not errors(value, schema["if"], path):
        out += errors(value, schema.get("then", True), path)
    return out


def _object(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    out = [f"{path}: {key!r} is required" for key in schema.get("required", []) if key not in value]
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            out += errors(item, props[key], f"{path}.{key}")
        else:
            out += errors(item, extra, f"{path}.{key}") if extra is not False else [f"{path}: unexpected key {key!r}"]
    return out


def _array(value: list[Any], schema: dict[str, Any], path: str) -> list[str]:
    out = []
    if len(value) < schema.get("minItems", 0):
        out.append(f"{path}: fewer than {schema['minItems']} items")
    prefix = schema.get("prefixItems", [])
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else schema.get("items", True)
        out += errors(item, sub, f"{path}[{i}]")
    return out


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


def _resolve(ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs: {ref}")
    node: Any = SCHEMA
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def invalid_frames(frames: list[dict[str, Any]], limit: int = 5) -> list[tuple[dict[str, Any], list[str]]]:
    """The first ``limit`` frames that break the schema, with their errors
    (keys a test harness adds, starting with ``_``, are ignored)."""
    bad = []
    for frame in frames:
        found = errors({k: v for k, v in frame.items() if not k.startswith("_")})
        if found:
            bad.append((frame, found))
            if len(bad) >= limit:
                break
    return bad
