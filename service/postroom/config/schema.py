"""The config's JSON Schema, for editors (`postroom schema`): pydantic's, with the input forms
the loader accepts where pydantic would describe only the parsed value."""

from __future__ import annotations

from typing import Any

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
    schema = Config.model_json_schema(schema_generator=_AsWritten)
    return {"$schema": SCHEMA_DIALECT, "title": "postroom.yaml", **{k: v for k, v in schema.items() if k != "title"}}
