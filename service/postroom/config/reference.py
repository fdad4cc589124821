"""The configuration reference page (docs/pages/configuration.md), written from the config's
JSON Schema — the one `postroom schema` prints, with the models' field descriptions — so the
page, the editor's hover help and the models cannot drift apart.

    python -m postroom.config.reference > docs/pages/configuration.md

tests/test_config_reference.py fails while the committed page differs from this output.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

from .schema import config_schema

Schema = dict[str, Any]

HEADER = """\
# Configuration reference

Every key of `postroom.yaml`, section by section. This page is generated from postroom's
config models (`python -m postroom.config.reference > docs/pages/configuration.md`); the same
descriptions are in the JSON Schema `postroom schema` prints, which editors show as you type.
`${NAME}` anywhere in a value is read from the environment, a secret file or `.env`.
A duration is written `30s`, `15m`, `1h`, `7d` (or a number of seconds).
"""
_REF = "#/$defs/"
_DURATIONS = TypeAdapter(timedelta)


def render(schema: Schema | None = None) -> str:
    """The whole page, as Markdown."""
    schema = config_schema() if schema is None else schema
    defs: dict[str, Schema] = schema.get("$defs", {})
    out = [HEADER]
    # Each model once, under the first key path that leads to it (breadth first from the top).
    queue: deque[tuple[str, str, Schema]] = deque([("top level", "top", schema)])
    seen = {"top"}
    while queue:
        path, anchor, model = queue.popleft()
        out.append(_section(path, anchor, model, defs))
        for key, prop in model.get("properties", {}).items():
            for suffix, name in _models_in(prop):
                if name not in seen:
                    seen.add(name)
                    where = key if path == "top level" else f"{path}.{key}"
                    queue.append((where + suffix, name.lower(), defs[name]))
    return "\n".join(out)


def _section(path: str, anchor: str, model: Schema, defs: dict[str, Schema]) -> str:
    lines = [f"## `{path}` {{#{anchor}}}", ""]
    if model.get("description") and anchor != "top":
        lines += [_one_line(model["description"]), ""]
    required = set(model.get("required", []))
    lines += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for key, prop in model.get("properties", {}).items():
        default = "required" if key in required else _default(prop)
        cells = [f"`{key}`", _type(prop, defs), default, _one_line(prop.get("description", ""))]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _models_in(prop: Schema) -> list[tuple[str, str]]:
    """(path suffix, model name) of every model a property holds, directly or nested."""
    if "$ref" in prop:
        return [("", prop["$ref"].removeprefix(_REF))]
    found: list[tuple[str, str]] = []
    for union in ("anyOf", "oneOf"):
        for option in prop.get(union, []):
            found += _models_in(option)
    if isinstance(prop.get("items"), dict):
        found += [("[]" + s, n) for s, n in _models_in(prop["items"])]
    if isinstance(prop.get("additionalProperties"), dict):
        found += [(".NAME" + s, n) for s, n in _models_in(prop["additionalProperties"])]
    return found


def _type(prop: Schema, defs: dict[str, Schema]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].removeprefix(_REF)
        return f"[{name}](#{name.lower()})"
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return " or ".join(f"`{v}`" for v in prop["enum"])
    for union in ("anyOf", "oneOf"):
        if union in prop:
            options = [o for o in prop[union] if o.get("type") != "null"]
            if _is_duration(prop):
                return "duration"
            return " or ".join(dict.fromkeys(_type(o, defs) for o in options))
    kind = prop.get("type")
    if kind == "array":
        return "list of " + _type(prop.get("items", {}), defs)
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return "mapping of name to " + _type(prop["additionalProperties"], defs)
    if kind == "string" and prop.get("format") == "password":
        return "string (secret)"
    return str(kind or "any")


def _is_duration(prop: Schema) -> bool:
    return any("pattern" in o and "ms|s|m|h|d|w" in o["pattern"] for o in prop.get("anyOf", []))


def _default(prop: Schema) -> str:
    if "default" not in prop or prop["default"] is None:
        return ""
    value = prop["default"]
    if _is_duration(prop) and isinstance(value, str):
        return f"`{_duration(_DURATIONS.validate_python(value))}`"
    if value in ({}, []):
        return "empty"
    if isinstance(value, dict):
        return "each key's default"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


if __name__ == "__main__":
    sys.stdout.write(render())
