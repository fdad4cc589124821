"""Read postroom.yaml: YAML → ${NAME} interpolation → schema → cross-references.

Every problem is reported as `FILE:LINE: key.path: what is wrong`, all at once, so a user
fixes a broken config in one pass instead of one error per restart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from ..sieve.syntax import read_script
from .dburl import sqlite_beside
from .model import Config, FileSource, SqlSource
from .settings import FILE_SUFFIX, Settings, read_dotenv, read_secret_file

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path  # the YAML file, absolute
    settings: Settings

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def templates_dir(self) -> Path:
        return self.settings.templates_dir()


class SecretLookup:
    """Where ${NAME} values come from: the environment, then secret files, then `.env`."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None, dotenv_path: Path | None = None):
        self._environ = os.environ if environ is None else environ
        self._dirs = settings.secret_dirs()
        path = dotenv_path or Path(".env")
        self._dotenv = read_dotenv(path)

    def get(self, name: str) -> str | None:
        """NAME's value; ConfigError when NAME_FILE names a file that can't be read, or when
        both NAME and NAME_FILE are set (which one was meant?)."""
        pointer = f"{name}{FILE_SUFFIX}"
        for source in (self._environ, self._dotenv):
            if pointer in source:
                if name in self._environ or name in self._dotenv:
                    raise ConfigError(f"both {name} and {pointer} are set; keep one")
                return read_secret_file(source[pointer], pointer)
        if name in self._environ:
            return self._environ[name]
        for folder in self._dirs:
            for candidate in (folder / name, folder / name.lower()):
                if candidate.is_file():
                    return candidate.read_text(encoding="utf-8").rstrip("\r\n")
        return self._dotenv.get(name)


def load_config(
    settings: Settings | None = None, *, path: Path | None = None, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    settings = settings or Settings()
    path = (path or settings.config).resolve()
    shown = str(path)
    raw, lines = _parse_yaml(_read_config(path, shown), shown)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", "the top level must be a mapping (accounts:, jobs:, rules:)")], file=shown)

    lookup = SecretLookup(settings, environ)
    problems: list[tuple[Path_, str]] = []
    raw = _interpolate(raw, (), lookup, problems)
    if problems:
        raise _error(problems, lines, shown)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise _error(_pydantic_problems(exc), lines, shown) from None
    problems = config.reference_problems()
    if problems:
        raise _error(problems, lines, shown)
    _resolve_relative_paths(config, path.parent)
    _check_sieve_scripts(config)
    return LoadedConfig(config=config, path=path, settings=settings)


def read_as_written(path: Path) -> tuple[Any, list[str]]:
    """The config's data before interpolation (read with the same bounds as ``load_config``),
    and the ${NAME}s its values use, in order of first use: what a deployment must provide,
    found without needing any of them set (`postroom deploy`)."""
    shown = str(path)
    raw, _lines = _parse_yaml(_read_config(path, shown), shown)
    names: dict[str, None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            names.update((m.group(1), None) for m in _VAR.finditer(value) if m.group(1))

    walk(raw)
    return raw, list(names)


# What a config may cost to read, whatever is in it (the daemon rereads it on SIGHUP). A real
# one is a few hundred lines. Aliases are counted expanded: ten nested aliases of ten each are
# a few hundred bytes of YAML and a billion values for everything that walks the result.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_CONFIG_NODES = 200_000
DEFAULT_ATTACHMENTS_DIR = Path("attachments")  # per-row attachment paths are relative to this


def _read_config(path: Path, shown: str) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("file not found; pass --config PATH or set POSTROOM_CONFIG", file=shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=shown) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; is this the config file?", file=shown)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=shown) from None


# libyaml's parser when PyYAML has it (its wheels do): a tenth of the pure-Python parse time.
_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str, shown: str) -> tuple[Any, dict[Path_, int]]:
    """The data and each key path's line, from one parse (the node tree gives both)."""
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expanded_size(node, shown)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([(where, f"YAML syntax error: {problem}")], file=shown) from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return data, lines


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root: yaml.Node, shown: str) -> None:
    """Refuse a node graph that expands (aliases written out) beyond MAX_CONFIG_NODES, or that
    contains itself. Each node is sized once (an alias is the same node object as its anchor),
    so this costs the size of the YAML, not of its expansion."""
    sizes: dict[int, int] = {}
    started: set[int] = set()  # sized when their children are: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_sized = stack.pop()
        if children_sized:
            started.discard(id(node))
            sizes[id(node)] = size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_CONFIG_NODES:
                raise ConfigError(
                    [
                        (
                            f"line {node.start_mark.line + 1}",
                            f"this expands to more than {MAX_CONFIG_NODES:,} values with its aliases "
                            f"written out; use fewer aliases",
                        )
                    ],
                    file=shown,
                )
        elif id(node) not in sizes:
            if id(node) in started:
                raise ConfigError(
                    [
                        (
                            f"line {node.start_mark.line + 1}",
                            "an alias refers to a value that contains it; a config cannot contain itself",
                        )
                    ],
                    file=shown,
                )
            started.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _collect_lines(node: yaml.Node, at: Path_, lines: dict[Path_, int]) -> None:
    lines[at] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            lines[(*at, k)] = key.start_mark.line + 1
            _collect_lines(value, (*at, k), lines)
            lines[(*at, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_lines(item, (*at, i), lines)


def _interpolate(value: Any, at: Path_, lookup: SecretLookup, problems: list[tuple[Path_, str]]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*at, k), lookup, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*at, i), lookup, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        try:
            found = lookup.get(name)
        except ConfigError as exc:
            problems.extend((at, what) for _where, what in exc.problems)
            return ""
        if found is None:
            problems.append(
                (at, f"${{{name}}} is not set; export {name}, put it in .env, or add a secret file named {name}")
            )
            return ""
        return found

    return _VAR.sub(replace, value)


def _pydantic_problems(exc: ValidationError) -> list[tuple[Path_, str]]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}; check its spelling and indentation"
        elif err["type"] == "missing":
            msg = "required key is missing"
        # pydantic puts union/tagged-union member names in loc; they mean nothing to a user.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "tagged-union"))))
        out.append((loc, msg))
    return out


def _error(problems: list[tuple[Path_, str]], lines: dict[Path_, int], shown: str) -> ConfigError:
    rendered = []
    for loc, msg in problems:
        line = _nearest_line(loc, lines)
        key = ".".join(str(p) for p in loc) or "(top level)"
        rendered.append((f"line {line}: {key}" if line else key, msg))
    return ConfigError(rendered, file=shown)


def _nearest_line(loc: Path_, lines: dict[Path_, int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _resolve_relative_paths(config: Config, base: Path) -> None:
    """Files and SQLite databases named relative to the config mean beside the config."""
    for job in config.jobs.values():
        for source in job.data.values():
            if isinstance(source, FileSource) and not source.file.is_absolute():
                source.file = base / source.file
            if isinstance(source, SqlSource) and source.database:
                source.database = sqlite_beside(source.database, base)
        for att in job.attachments:
            if att.file is not None and "{" not in att.file and not Path(att.file).is_absolute():
                att.file = str(base / att.file)
    # A folder of its own by default, not the config's (which holds .env and the config).
    config.attachments_dir = base / (config.attachments_dir or DEFAULT_ATTACHMENTS_DIR)
    for account in config.accounts.values():
        if account.sieve is not None and not account.sieve.file.is_absolute():
            account.sieve = account.sieve.model_copy(update={"file": base / account.sieve.file})


def _check_sieve_scripts(config: Config) -> None:
    """Each account's Sieve script parses: a broken one fails ``check`` (and start-up) naming
    the script's file, line and column."""
    for account in config.accounts.values():
        if account.sieve is not None:
            read_script(account.sieve.file)
