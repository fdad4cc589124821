"""The layers written in the package's docstring (service/postroom/__init__.py) are a rule the
code is checked against: every module and package at the package's root stands on one layer,
and an import points to its own layer or one below, never up, except the few listed there as
still to be taken out (``STILL_UP``: that list must shrink with the code, not grow).

Imports are read from the syntax trees, including those inside functions and under
``TYPE_CHECKING``: a lazy import hides an arrow from Python, not from a reader."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import postroom

PACKAGE = Path(__file__).resolve().parent.parent / "service" / "postroom"

# Module -> module imports that still point up, as the docstring's last paragraph names them.
STILL_UP = {
    ("postroom.config.loader", "postroom.sieve.syntax"),
}


def units() -> set[str]:
    """The package's rooms: each module and subpackage at its root."""
    found = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    found |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return found


def layers(doc: str, rooms: set[str]) -> dict[str, int]:
    """Room -> its layer, read from the docstring's numbered list (``name.py`` or ``name/``)."""
    placed: dict[str, int] = {}
    layer: int | None = None
    for line in doc.splitlines():
        numbered = re.match(r"(\d)\. ", line)
        if numbered:
            layer = int(numbered[1])
        elif not line.startswith("   "):
            layer = None
        if layer is None:
            continue
        for name in re.findall(r"``([a-z_]+)(?:\.py|/)``", line):
            if name in rooms:
                assert name not in placed, f"{name} is on two layers"
                placed[name] = layer
    return placed


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> set[tuple[str, str]]:
    """(importer, imported) for every import of a postroom module, wherever it stands."""
    found: set[tuple[str, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {(name, alias.name) for alias in node.names if alias.name.startswith("postroom.")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("postroom."):
                    # `from . import x` names a module x when there is one
                    found |= {(name, f"{target}.{a.name}") for a in node.names if _is_module(f"{target}.{a.name}")}
                    found.add((name, target))
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_room_stands_on_one_written_layer() -> None:
    assert postroom.__doc__ is not None
    rooms = units()
    placed = layers(postroom.__doc__, rooms)
    assert sorted(rooms - set(placed)) == []


def test_imports_point_down_or_across_never_up() -> None:
    assert postroom.__doc__ is not None
    placed = layers(postroom.__doc__, units())
    up = set()
    for importer, imported in imports():
        a, b = room(importer), room(imported)
        if a is None or b is None or a == b:
            continue
        if placed[b] > placed[a]:
            up.add((importer, imported))
    assert sorted(up) == sorted(STILL_UP)
    for importer, _ in sorted(STILL_UP):  # each named where the layers are written
        assert f"{importer.rsplit('.', 1)[1]}.py``" in postroom.__doc__


def test_rooms_on_one_layer_never_import_each_other_both_ways() -> None:
    assert postroom.__doc__ is not None
    placed = layers(postroom.__doc__, units())
    arrows = {(room(a), room(b)) for a, b in imports() if room(a) and room(b) and room(a) != room(b)}
    both_ways = sorted((a, b) for a, b in arrows if (b, a) in arrows and a is not None and b is not None and a < b)
    assert [(a, b) for a, b in both_ways if placed[a] == placed[b]] == []
    # the two halves stand side by side: neither imports the other
    assert ("incoming", "outgoing") not in arrows and ("outgoing", "incoming") not in arrows
