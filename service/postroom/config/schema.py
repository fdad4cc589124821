"""The config's JSON Schema, for editors (`postroom schema`): pydantic's, with the input forms
the loader accepts where pydantic would describe only the parsed value."""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .model import Config
from .types import _DURATION

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _AsWritten(GenerateJsonSchema):
    def timedelta_schema(self, schema: core_schema.TimedeltaSchema) -> JsonSchemaValue:
        # "15m", "1h", "7d" or a number of seconds — not pydantic's ISO 8601 "PT15M".
        return {
            "anyOf": [{"type": "string", "pattern": _DURATION.pattern}, {"type": "number"}],
            "description": "a duration: 30s, 15m, 1h, 7d, or seconds",
        }

    def datetime_schema(self, schema: core_schema.DatetimeSchema) -> JsonSchemaValue:
        # YAML's own timestamps; a time without an offset is in the job's zone (no RFC 3339 format).
        return {"type": "string", "description": "a date and time: 2027-01-04T09:00:00, offset optional"}


def config_schema() -> dict[str, Any]:
    _describe_fields(Config)
    schema = Config.model_json_schema(schema_generator=_AsWritten)
    return {"$schema": SCHEMA_DIALECT, "title": "postroom.yaml", **{k: v for k, v in schema.items() if k != "title"}}


_DESCRIBED: set[type[BaseModel]] = set()


def _describe_fields(root: type[BaseModel]) -> None:
    """Give every field of ``root``'s models the docstring under it as its description, as
    pydantic's ``use_attribute_docstrings`` would have at import (an explicit ``description``
    stays), then rebuild the models, inner ones first, so the schema carries them. Only the
    schema reads descriptions: the models are built without them, which spares every command
    and the daemon reading and tokenizing the models' source. Done once per process."""
    if root in _DESCRIBED:
        return
    for model in _models_inside_out(root):
        for name, field in model.model_fields.items():
            if field.description is None:
                field.description = _attribute_doc(model, name)
    for model in _models_inside_out(root):
        model.model_rebuild(force=True)
    _DESCRIBED.add(root)


def _models_inside_out(root: type[BaseModel]) -> list[type[BaseModel]]:
    order: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in order:
            return
        order.append(model)  # placeholder against cycles; moved behind its fields' models below
        for field in model.model_fields.values():
            for inner in _models_in(field.annotation):
                visit(inner)
        order.remove(model)
        order.append(model)

    visit(root)
    return order


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type):  # list[X] is not one (3.11): its args are looked into
        return [annotation] if issubclass(annotation, BaseModel) else []
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _attribute_doc(model: type[BaseModel], name: str) -> str | None:
    """The docstring under ``name`` in the nearest class of ``model``'s MRO that annotates it."""
    for cls in model.__mro__:
        if name in inspect.get_annotations(cls):
            return _attribute_docs(cls).get(name)
    return None


@functools.cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for the string statements right under a class's annotated names
    (pydantic's rule: the docstring, cleaned by inspect.cleandoc)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    docs: dict[str, str] = {}
    if not isinstance(body, ast.ClassDef):
        return docs
    for before, stmt in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(before, ast.AnnAssign)
            and isinstance(before.target, ast.Name)
            and isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ):
            docs[before.target.id] = inspect.cleandoc(stmt.value.value)
    return docs
