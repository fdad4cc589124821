"""Every key of the config has a description (the JSON Schema `postroom schema` prints, and so
the editor's hover help), and docs/pages/configuration.md is the page generated from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from postroom.config.reference import render
from postroom.config.schema import config_schema

PAGE = Path(__file__).resolve().parent.parent / "docs" / "pages" / "configuration.md"


def properties(schema: Any, at: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property of every object in the schema, with where it is."""
    if isinstance(schema, dict):
        for key, prop in schema.get("properties", {}).items():
            yield f"{at}.{key}", prop
        for key, value in schema.items():
            yield from properties(value, f"{at}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from properties(value, f"{at}[{i}]")


def test_every_config_key_has_a_description():
    found = list(properties(config_schema()))
    assert len(found) >= 150  # the schema was read at all
    missing = sorted(where for where, prop in found if not prop.get("description", "").strip())
    assert missing == [], f"config keys without a description (add a docstring under the field): {missing}"


def test_the_configuration_page_is_generated_from_the_models():
    assert PAGE.read_text() == render(), "regenerate: python -m postroom.config.reference > docs/pages/configuration.md"


def test_the_page_names_every_key_once_per_model():
    page = render()
    for where, _prop in properties(config_schema()):
        key = where.rsplit(".", 1)[1]
        assert f"| `{key}` |" in page, where
