"""Loader for tool schemas in OpenAI function-calling shape.

Accepted: a list (or JSONL, or a single object) of `{"type": "function", "function": {...}}`
wrappers or bare `{"name", "description", "parameters"}` functions. The result schema, which
ingestion uses to chain tools by type, comes from `returns` (or `x-returns`, `output`) on the
function object. A tool's name must be usable as an OpenAI function name and unique in the
file; `parameters` must be a JSON Schema of type object.
"""

from __future__ import annotations

import re
from typing import Any

from kap.graphstore.loaders._common import (
    Entry,
    Payload,
    optional_text,
    require_object,
)
from kap.graphstore.records import LoadResult, ToolSpec
from kap.platform.errors import LoaderError

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
RETURNS_KEYS = ("returns", "x-returns", "output")


def from_payload(payload: Payload) -> LoadResult:
    tools: list[ToolSpec] = []
    seen: dict[str, str] = {}
    for entry in payload.entries:
        tool = _tool(entry)
        if tool.name in seen:  # one (:Tool) per name: a second would silently replace the first
            raise LoaderError(
                f"{entry.where}: tool {tool.name!r} is defined twice (first at {seen[tool.name]})"
            )
        seen[tool.name] = entry.where
        tools.append(tool)
    return LoadResult(tools=tools)


def _tool(entry: Entry) -> ToolSpec:
    outer = require_object(entry, 'a function object (with "name" and "parameters")')
    fn = outer.get("function", outer)
    if not isinstance(fn, dict):
        raise LoaderError(f"{entry.where}: field 'function' must be an object")
    name = fn.get("name")
    if name is None:
        raise LoaderError(f"{entry.where}: field 'name' is missing")
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise LoaderError(
            f"{entry.where}: tool name {name!r} is invalid: it must match ^[A-Za-z0-9_.-]{{1,64}}$"
        )
    where = f"{entry.where} (tool {name!r})"
    return ToolSpec(
        name=name,
        description=optional_text(fn.get("description"), "description", where) or "",
        parameters=_schema(fn.get("parameters"), "parameters", where, require_object_type=True),
        source=entry.where,
        returns=_returns(fn, where),
    )


def _returns(fn: dict[str, Any], where: str) -> dict[str, Any] | None:
    for key in RETURNS_KEYS:
        if fn.get(key) is not None:
            return _schema(fn[key], key, where, require_object_type=False)
    return None


def _schema(value: Any, field: str, where: str, *, require_object_type: bool) -> dict[str, Any]:
    if value is None:
        raise LoaderError(f"{where}: field {field!r} is missing (a JSON Schema object)")
    if not isinstance(value, dict):
        raise LoaderError(
            f"{where}: field {field!r} must be a JSON Schema object, got {type(value).__name__}"
        )
    if require_object_type and value.get("type") != "object":
        raise LoaderError(
            f'{where}: field {field!r} must be a JSON Schema with "type": "object", '
            f"got type {value.get('type')!r}"
        )
    properties = value.get("properties", {})
    if not isinstance(properties, dict):
        raise LoaderError(f"{where}: field '{field}.properties' must be an object")
    return value
