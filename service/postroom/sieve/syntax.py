"""A Sieve script read into plain, typed nodes (RFC 5228), through sievelib's parser.

sievelib (a kept library) parses the grammar and checks each command's arguments against the
extensions a script ``require``s. What it lacks, and what this module adds:

- it accepts any ``require`` name, even one nothing implements: we refuse every extension
  not in ``EXTENSIONS`` (an unknown one would silently change what a script means);
- it has no ``ereject`` command (RFC 5429): one small command class registered through its
  ``add_commands`` hook, so the script parses and ``check`` can say why it is refused;
- it keeps strings as written (quotes, escapes, ``text:`` blocks with dot-stuffing) and
  numbers with their K/M/G suffix: decoded here;
- it has no limits: the script's size and its nesting depth are bounded here;
- its nodes carry no line numbers (only its errors do), so the trace names tests by what they
  test, not by line.

Its parse state is thread-local (``sievelib.commands.parser_state``): one parse at a time per
thread, which is how this module calls it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from sievelib import commands as sieve_commands
from sievelib.parser import Parser

from postroom.errors import ConfigError

from .match import check_regex

#: The extensions postroom implements (``require`` of anything else is refused).
EXTENSIONS: frozenset[str] = frozenset(
    {
        "fileinto",
        "envelope",
        "body",
        "variables",
        "date",
        "regex",
        "comparator-i;octet",
        "comparator-i;ascii-casemap",
        "copy",
        "mailbox",
        "imap4flags",
        "vacation",
        "vacation-seconds",
        "relational",
        # parsed so that ``check`` can refuse them with the reason (postroom.sieve.compile)
        "reject",
        "ereject",
    }
)

#: What the interpreter runs (``postroom.sieve.interpret``); sievelib knows more (notify,
#: environment, ...), refused here by name.
KNOWN_COMMANDS: frozenset[str] = frozenset(
    {"require", "if", "elsif", "else", "stop", "keep", "fileinto", "redirect", "discard", "vacation"}
    | {"setflag", "addflag", "removeflag", "set", "reject", "ereject"}
)
KNOWN_TESTS: frozenset[str] = frozenset(
    {"header", "address", "envelope", "exists", "size", "allof", "anyof", "not", "true", "false"}
    | {"body", "date", "currentdate", "hasflag"}
)

MAX_SCRIPT_BYTES = 256 * 1024  # a real script is a few kilobytes; Pigeonhole's default is 1 MiB
MAX_NESTING = 32  # Pigeonhole's default limit on nested blocks and tests

#: An argument's value: a string, a string list, a number, a test, or a test list.
Value: TypeAlias = "str | tuple[str, ...] | int | Node | tuple[Node, ...]"


@dataclass(frozen=True)
class Node:
    """One command or test. ``args`` by sievelib's argument name (``match-type``,
    ``header-names``, ``key-list``, ...): a tag is its lower-cased name (``:contains``) and
    its value, if it takes one, is in ``tag_values`` under the same name. ``block`` holds the
    commands of an if/elsif/else."""

    name: str
    args: Mapping[str, Value] = field(default_factory=dict)
    tag_values: Mapping[str, Value] = field(default_factory=dict)
    block: tuple[Node, ...] = ()

    def text(self, name: str, default: str = "") -> str:
        value = self.args.get(name, default)
        return value if isinstance(value, str) else default

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.args.get(name, ())
        if isinstance(value, str):
            return (value,)
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return tuple(str(v) for v in value)
        return ()

    def tag(self, name: str) -> str | None:
        """The tag given for argument ``name`` (``:contains``), or None."""
        value = self.args.get(name)
        return value if isinstance(value, str) and value.startswith(":") else None

    def tag_text(self, name: str) -> str | None:
        value = self.tag_values.get(name)
        return value if isinstance(value, str) else None

    def tag_strings(self, name: str) -> tuple[str, ...]:
        value = self.tag_values.get(name)
        if isinstance(value, str):
            return (value,)
        if isinstance(value, tuple):
            return tuple(v for v in value if isinstance(v, str))
        return ()

    def tag_number(self, name: str) -> int | None:
        value = self.tag_values.get(name)
        return value if isinstance(value, int) else None

    def tests(self) -> tuple[Node, ...]:
        """The tests this node holds: ``if``/``elsif``/``not``'s one, ``allof``/``anyof``'s list."""
        found: list[Node] = []
        for value in self.args.values():
            if isinstance(value, Node):
                found.append(value)
            elif isinstance(value, tuple):
                found.extend(v for v in value if isinstance(v, Node))
        return tuple(found)


@dataclass(frozen=True)
class Script:
    source: str  # the file, for messages
    requires: frozenset[str]
    commands: tuple[Node, ...]


class SieveSyntaxError(ConfigError):
    """A script that can't be used: names the file, line and column."""

    def __init__(self, source: str, message: str, line: int | None = None, column: int | None = None):
        where = f"line {line}, column {column}" if line is not None else ""
        self.line, self.column = line, column
        super().__init__([(where, message)], file=source)


class ErejectCommand(sieve_commands.RejectCommand):  # type: ignore[misc]
    """``ereject`` (RFC 5429), which sievelib lacks: parsed only to be refused with a reason."""

    extension = "ereject"


sieve_commands.add_commands(ErejectCommand)


def read_script(path: Path) -> Script:
    """Read and parse a script file (its size bounded before it is read whole)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the Sieve script: {exc.strerror or exc}", file=str(path)) from None
    return parse_script(data, source=str(path))


def parse_script(data: bytes, *, source: str) -> Script:
    """Parse and check a script's bytes; ``source`` names it in errors."""
    if len(data) > MAX_SCRIPT_BYTES:
        raise SieveSyntaxError(source, f"larger than {MAX_SCRIPT_BYTES // 1024} KiB; is this a Sieve script?")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SieveSyntaxError(source, "not UTF-8 text", line, exc.start - data.rfind(b"\n", 0, exc.start)) from None
    _check_nesting(data, source)
    parser = Parser()
    if not parser.parse(data):
        line, column, _length = parser.error_pos
        raise SieveSyntaxError(source, str(parser.error).split(": ", 1)[-1], line, column)
    nodes = tuple(_node(command) for command in parser.result)
    requires = frozenset(name for node in nodes if node.name == "require" for name in node.strings("capabilities"))
    unknown = sorted(requires - EXTENSIONS)
    if unknown:
        line, column = _position(data, unknown[0])
        raise SieveSyntaxError(
            source,
            f"require {unknown[0]!r}: an extension postroom does not implement "
            f"(it implements {', '.join(sorted(EXTENSIONS - {'reject', 'ereject'}))})",
            line,
            column,
        )
    _check_nodes(nodes, data, source, KNOWN_COMMANDS)
    for name in ("reject", "ereject"):
        if _uses(nodes, name):
            line, column = _position(data, name, command=True)
            raise SieveSyntaxError(
                source, f"{name}: not possible after delivery; use vacation or redirect", line, column
            )
    return Script(source, requires, nodes)


def _check_nodes(nodes: Sequence[Node], data: bytes, source: str, known: frozenset[str]) -> None:
    """Every command and test is one the interpreter runs; every literal :regex key compiles
    and is safe to run (``match.check_regex``)."""
    for node in nodes:
        if node.name not in known:
            line, column = _position(data, node.name, command=True)
            raise SieveSyntaxError(source, f"{node.name}: not supported by postroom", line, column)
        if node.tag("match-type") == ":regex":
            for key in node.strings("key-list"):
                problem = check_regex(key) if "${" not in key else None
                if problem:
                    line, column = _position(data, key.replace("\\", "\\\\"))
                    raise SieveSyntaxError(source, f":regex {key!r}: {problem}", line, column)
        _check_nodes(node.tests(), data, source, KNOWN_TESTS)
        _check_nodes(node.block, data, source, KNOWN_COMMANDS)


def _check_nesting(data: bytes, source: str) -> None:
    """Blocks, test lists and ``not`` nest at most MAX_NESTING deep (sievelib and the
    interpreter recurse on them). Counted on the bytes, outside strings and comments."""
    depth = nots = 0
    i, n = 0, len(data)
    while i < n:
        c = data[i : i + 1]
        if c == b'"':
            i += 1
            while i < n and data[i : i + 1] != b'"':
                i += 2 if data[i : i + 1] == b"\\" else 1
        elif c == b"#":
            end = data.find(b"\n", i)
            i = n if end < 0 else end
        elif data.startswith(b"/*", i):
            end = data.find(b"*/", i + 2)
            i = n if end < 0 else end + 1
        elif data.startswith(b"text:", i):
            ends = [e for e in (data.find(b"\n.\n", i), data.find(b"\n.\r\n", i)) if e >= 0]
            i = n if not ends else min(ends) + 2
        elif c in (b"{", b"("):
            depth += 1
        elif c in (b"}", b")"):
            depth -= 1
        elif data.startswith(b"not", i) and not data[i - 1 : i].isalnum() and not data[i + 3 : i + 4].isalnum():
            nots += 1  # ``not not not ...``: each one a level until the test it ends in
            i += 2
        elif c.isalpha():
            nots = 0
        if depth + nots > MAX_NESTING:
            line = data[:i].count(b"\n") + 1
            raise SieveSyntaxError(
                source, f"nested deeper than {MAX_NESTING} levels", line, i - data.rfind(b"\n", 0, i)
            )
        i += 1


def _position(data: bytes, word: str, *, command: bool = False) -> tuple[int, int]:
    """Where ``word`` first appears (quoted, or as a command): for an error's line and column."""
    pattern = rb'(?<![\w"])' + re.escape(word.encode()) + rb"(?=[\s;])" if command else re.escape(f'"{word}"'.encode())
    found = re.search(pattern, data)
    at = found.start() if found else 0
    return data[:at].count(b"\n") + 1, at - data.rfind(b"\n", 0, at)


def _uses(nodes: Sequence[Node], name: str) -> bool:
    return any(node.name == name or _uses(node.block, name) for node in nodes)


def _string(raw: str) -> str:
    if raw.startswith('"'):
        return str(sieve_commands.tools.unquote(raw))
    if raw.lower().startswith("text:"):
        # RFC 5228 2.4.2: the first line (text: and any comment) is not content; the last
        # line is the "."; a line starting with ".." lost one dot when it was written
        body = raw.split("\n", 1)[1] if "\n" in raw else ""
        lines = body.split("\n")
        if lines and lines[-1].rstrip("\r") == ".":
            lines = lines[:-1]
        text = "\n".join(line[1:] if line.startswith("..") else line for line in lines)
        return text + ("\n" if lines else "")
    return raw


_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def _number(raw: str) -> int:
    unit = _UNITS.get(raw[-1:].lower(), 1)
    digits = raw[:-1] if unit != 1 else raw
    return int(digits) * unit


def _value(raw: Any, kind: Sequence[str]) -> Value:
    if isinstance(raw, sieve_commands.Command):
        return _node(raw)
    if isinstance(raw, list):
        if raw and isinstance(raw[0], sieve_commands.Command):
            return tuple(_node(item) for item in raw)
        return tuple(_string(str(item)) for item in raw)
    text = str(raw)
    if "number" in kind and text[:1].isdigit():
        return _number(text)
    if text.startswith(":"):
        return text.lower()
    return _string(text)


def _node(command: Any) -> Node:
    args: dict[str, Value] = {}
    tag_values: dict[str, Value] = {}
    for definition in command.args_definition:
        name = definition["name"]
        if name not in command.arguments:
            continue
        kinds = definition["type"]
        args[name] = _value(command.arguments[name], kinds)
        if name in command.extra_arguments:
            extra = definition.get("extra_arg", {}).get("type", "string")
            tag_values[name] = _value(command.extra_arguments[name], [extra] if isinstance(extra, str) else extra)
    block = tuple(_node(child) for child in command.children if child.get_type() != "test")
    return Node(command.name, args, tag_values, block)
