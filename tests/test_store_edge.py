"""The store edge is a rule the code is checked against, not a convention: inside an
``async def`` outside store/, nothing calls a store method directly or hands one to
``to_thread`` / ``run_in_executor`` — every store call goes through ``await store_call(...)``
(store/calls.py: the store's own threads, its gate and its error table; any other function
that works on the store through ``await <part>.calls.run(...)``), and a store is closed with
``await close_store(store)``, on the same threads. ``store_call`` is handed a store method
(it finds the store's threads through it): anything else is refused here, not at run time.

The check walks the package's syntax trees. A store method is recognised by the attribute it
is reached through and its name: ``<x>.outbox.by_message_ids``, ``self.leases.release``,
``store.record_error`` — the attribute names are those of the ``Store`` dataclass's parts,
reached through ``self`` or a store (``store``/``_store`` for a whole store or any one part),
the method names those their classes define, read from the classes themselves. A method passed as a value (``store_call(
self.inbound.statuses, …)``) is no call; nested plain functions and lambdas inside an
``async def`` run wherever they are handed to (usually ``store_call``) and are not looked into.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

from postroom.store import Store

PACKAGE = Path(__file__).resolve().parent.parent / "service" / "postroom"
STORE_DIR = PACKAGE / "store"
OFF_LOOP = {"to_thread", "run_in_executor"}


def _public_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def store_methods() -> dict[str, set[str]]:
    """Attribute name → the methods of what it names: each part of ``Store`` by its field name,
    and ``store`` for a whole store or any one part (a function that takes "the token store")."""
    hints = typing.get_type_hints(Store)
    parts: dict[str, set[str]] = {}
    for field in dataclasses.fields(Store):
        cls = hints[field.name]
        if isinstance(cls, type) and field.name not in ("engine", "calls", "lock"):
            parts[field.name] = _public_methods(cls)
    everything = set().union(*parts.values()) | _public_methods(Store)
    return {**parts, "store": everything}


METHODS = store_methods()


def _name(node: ast.expr) -> str | None:
    """The name an expression ends in: ``self.store.outbox`` → ``outbox``."""
    if isinstance(node, ast.Attribute):
        return node.attr.lstrip("_")
    if isinstance(node, ast.Name):
        return node.id.lstrip("_")
    return None


def is_store_method(node: ast.expr) -> bool:
    """``store.m``, ``part.m``, ``self.part.m`` or ``….store.part.m``, where part is a part of
    the store and m one of its methods (``logins.tokens.get`` is a dict's, not the store's)."""
    if not isinstance(node, ast.Attribute):
        return False
    receiver = node.value
    name = _name(receiver)
    if name is None or node.attr not in METHODS.get(name, ()):
        return False
    if name == "store" or isinstance(receiver, ast.Name):
        return True
    return isinstance(receiver, ast.Attribute) and _name(receiver.value) in ("self", "store")


class _AsyncBodies(ast.NodeVisitor):
    """Store calls made on the event loop: inside an async def, outside nested plain defs."""

    def __init__(self, path: Path):
        self.path = path
        self.found: list[str] = []
        self._async_depth = 0

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._async_depth += 1
        self.generic_visit(node)
        self._async_depth -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        saved, self._async_depth = self._async_depth, 0
        self.generic_visit(node)
        self._async_depth = saved

    def visit_Lambda(self, node: ast.Lambda) -> None:
        saved, self._async_depth = self._async_depth, 0
        self.generic_visit(node)
        self._async_depth = saved

    def visit_Call(self, node: ast.Call) -> None:
        if self._async_depth:
            where = f"{self.path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if is_store_method(node.func):
                self.found.append(f"{where}: {ast.unparse(node.func)}(…) on the event loop")
            elif isinstance(node.func, ast.Attribute) and node.func.attr in OFF_LOOP:
                handed = [arg for arg in node.args if is_store_method(arg)]
                if handed:
                    self.found.append(f"{where}: {ast.unparse(handed[0])} through {node.func.attr}, not store_call")
        self.generic_visit(node)


def store_calls_on_the_loop(source: str, path: Path) -> list[str]:
    visitor = _AsyncBodies(path)
    visitor.visit(ast.parse(source, filename=str(path)))
    return visitor.found


class _StoreCallArguments(ast.NodeVisitor):
    """``store_call(x, …)`` where x is not a store method: it has no store to run on."""

    def __init__(self, path: Path):
        self.path = path
        self.found: list[str] = []

    def visit_Call(self, node: ast.Call) -> None:
        if _name(node.func) == "store_call" and not (node.args and is_store_method(node.args[0])):
            handed = ast.unparse(node.args[0]) if node.args else "nothing"
            self.found.append(f"{self.path.relative_to(PACKAGE.parent)}:{node.lineno}: store_call({handed}, …)")
        self.generic_visit(node)


def store_calls_without_a_store_method(source: str, path: Path) -> list[str]:
    visitor = _StoreCallArguments(path)
    visitor.visit(ast.parse(source, filename=str(path)))
    return visitor.found


def test_async_code_reaches_the_store_only_through_store_call():
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if STORE_DIR not in path.parents:
            found += store_calls_on_the_loop(path.read_text(), path)
    assert found == [], "\n".join(found)


def test_the_check_sees_each_way_a_store_call_can_be_put_back_on_the_loop():
    path = PACKAGE / "example.py"
    source = """
async def direct(self, store):
    self.leases.release(self.watch)
    store.outbox.by_message_ids(ids)
    self._store.record_error("a", "b", now=now)
    await asyncio.to_thread(self.store.bounces.suppressed, account)
    await loop.run_in_executor(None, store.close)

async def through_the_edge(self, store, tokens):
    await store_call(self.leases.release, self.watch)
    await store_call(store.outbox.by_message_ids, ids)
    await tokens.token(now)  # a token provider's method, not the token store's
    logins.tokens.get(name)  # a dict of token providers
    await asyncio.to_thread(open_store, settings)
    await close_store(store)

    def on_a_store_thread():
        return store.outbox.by_message_ids(ids)

    await store_call(on_a_store_thread)
    await store_call(lambda: store.inbound.statuses(keys))

def not_async(store):
    store.outbox.by_message_ids(ids)
"""
    found = store_calls_on_the_loop(source, path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "self.leases.release(…) on the event loop",
        "store.outbox.by_message_ids(…) on the event loop",
        "self._store.record_error(…) on the event loop",
        "self.store.bounces.suppressed through to_thread, not store_call",
        "store.close through run_in_executor, not store_call",
    ]


def test_store_call_is_handed_a_store_method_everywhere():
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if STORE_DIR not in path.parents:
            found += store_calls_without_a_store_method(path.read_text(), path)
    assert found == [], "\n".join(found)


def test_the_check_sees_a_store_call_without_a_store_method():
    source = """
async def reads(self, store):
    await store_call(self.inbound.statuses, keys)
    await store_call(store.outbox.by_message_ids, ids)
    await store.calls.run(on_a_store_thread)
    await store_call(on_a_store_thread)
    await store_call(lambda: store.inbound.statuses(keys))
"""
    found = store_calls_without_a_store_method(source, PACKAGE / "example.py")
    assert [line.split(": ", 1)[1] for line in found] == [
        "store_call(on_a_store_thread, …)",
        "store_call(lambda: store.inbound.statuses(keys), …)",
    ]
