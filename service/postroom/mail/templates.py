"""Email templates: one ``NAME.j2`` per email with blocks ``subject``, ``text`` and/or ``html``.

Pure: no I/O beyond reading template files. Two sandboxed environments share one loader:
``_html_env`` autoescapes and renders the ``html`` block, ``_plain_env`` renders ``subject``
and ``text`` verbatim (escaping ``&`` in a subject or a text part would be a bug).

Inheritance: ``{% extends "layout.j2" %}`` must name its parent literally. Blocks are rendered
one at a time through the whole chain, so a layout wraps its page in a block of its own, e.g.
``{% block html %}<html>…{% block content %}{% endblock %}…</html>{% endblock %}``; content
outside blocks, in a child or a layout, is not rendered (import macros inside the block).

Rendering is bounded (see the ``MAX_*`` constants; sizes are checked before a value is built,
by the sizers in bounds.py). The bounds are guards against runaway
templates and hostile data, not a hard CPU limit: the time budget is checked at every call,
attribute access and output chunk, not between bare loop iterations.
"""

from __future__ import annotations

import contextvars
import difflib
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from postroom.errors import TemplateError
from postroom.mail import locale_filters
from postroom.mail.bounds import (
    FILTER_SIZES,
    GLOBAL_SIZES,
    MAX_BLOCK_CHARS,
    MAX_INT_BITS,
    MAX_RANGE,
    bounded,
    bounded_str_format,
    check_str_method,
    concat_size,
    printf_size,
    refuse_over,
    repeat_size,
)

if TYPE_CHECKING:
    import css_inline
from postroom.mail.bounds import LimitExceeded as _LimitExceeded
from postroom.mail.text import html_to_text

__all__ = [
    "MAX_BLOCK_CHARS",
    "MAX_INT_BITS",
    "MAX_RANGE",
    "MAX_RENDER_SECONDS",
    "RenderedEmail",
    "TemplateRenderer",
]

MAX_RENDER_SECONDS = 10.0  # one render() / render_string() call
MAX_EXTENDS_DEPTH = 10  # layout chain length; also stops an extends cycle
MAX_UNDEFINED_TOLD = 20  # undefined names `check` names per template file (the first, by name)
_MAX_CACHED_STRINGS = 256  # compiled render_string() sources kept

SUFFIX = ".j2"
BLOCKS = ("subject", "text", "html")

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("template_deadline")


def _check_deadline() -> None:
    deadline = _deadline.get(None)
    if deadline is not None and time.monotonic() >= deadline:
        raise _LimitExceeded("rendering took longer than its time limit")


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise _LimitExceeded(f"range() of {len(rng)} items is over the limit ({MAX_RANGE})")
    return rng


class _BoundedCodeGenerator(CodeGenerator):
    """``a ~ b`` compiles to a string join the sandbox never sees, so repeated ``{% set a = a ~ a
    %}`` would double a string past any limit. Each one is wrapped in the environment's
    ``bounded_concat``. The one place leaning on Jinja's compiler internals (``visit_Concat``,
    Jinja 3.1); test_templates fails if a Jinja upgrade stops calling it."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus size and time bounds; immutable so templates can't alter job data."""

    intercepted_binops = frozenset({"*", "%", "+", "**"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, loader: jinja2.BaseLoader, *, autoescape: bool, auto_reload: bool) -> None:
        super().__init__(
            loader=loader,
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=auto_reload,
        )
        self.globals["range"] = _bounded_range
        for name, sizer in FILTER_SIZES.items():
            self.filters[name] = bounded(name, self.filters[name], sizer)
        for name, sizer in GLOBAL_SIZES.items():
            self.globals[name] = bounded(name, cast("Callable[..., Any]", self.globals[name]), sizer)
        self.filters["money"] = locale_filters.money
        self.filters["number"] = locale_filters.number
        self.filters["date"] = locale_filters.date
        self.filters["datetime"] = locale_filters.datetime

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _check_deadline()
        if operator == "*":
            refuse_over("repetition", repeat_size(left, right))
        elif operator == "+":
            refuse_over("concatenation", concat_size(left, right))
        elif operator == "%" and isinstance(left, str):
            refuse_over("%-formatting", printf_size(left, right))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and left.bit_length() * right > MAX_INT_BITS:
                raise _LimitExceeded(f"power result is over the limit ({MAX_INT_BITS} bits)")
        return super().call_binop(context, operator, left, right)

    @staticmethod
    def bounded_concat(joined: str) -> str:
        """Called by templates compiled with _BoundedCodeGenerator on every ``~`` result."""
        refuse_over("~", len(joined))
        return joined

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``s.format`` / ``s.format_map`` as the sandbox wraps them, with widths bounded."""
        if super().wrap_str_format(value) is None:
            return None
        return bounded_str_format(self, value)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        args = check_str_method(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_deadline()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_deadline()
        return super().getitem(obj, argument)


class OutsideTemplates(jinja2.TemplateNotFound):
    """A template name whose file is a link out of the templates folder."""


class _ConfinedLoader(jinja2.FileSystemLoader):
    """Templates from one folder only: a name whose file leads out of it through a symbolic
    link (``templates/footer.j2 -> /etc/passwd``) is not found, said why, and never read."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder))
        self._folder = folder

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        root = self._folder.resolve()
        pieces = jinja2.loaders.split_template_path(template)  # refuses '..' itself
        if not root.joinpath(*pieces).resolve().is_relative_to(root):
            raise OutsideTemplates(
                template, f"{template} leads out of the templates folder ({self._folder}) through a symbolic link"
            )
        return super().get_source(environment, template)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str  # always present (derived from html if no text block)
    html: str | None  # CSS already inlined


def _defined_outside_blocks(tree: nodes.Template) -> set[str]:
    """Names a template's top level sets or imports: never run here (blocks are rendered
    one at a time), so a block reading one fails."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, nodes.Assign | nodes.AssignBlock):
            names.update(n.name for n in node.target.find_all(nodes.Name))
            if isinstance(node.target, nodes.Name):
                names.add(node.target.name)
        elif isinstance(node, nodes.Import):
            names.add(node.target)
        elif isinstance(node, nodes.FromImport):
            names.update(n if isinstance(n, str) else n[1] for n in node.names)
        elif isinstance(node, nodes.Macro):
            names.add(node.name)
    return names


class TemplateRenderer:
    """Loads, checks and renders the templates in one directory."""

    def __init__(
        self,
        template_dir: Path | str,
        *,
        max_render_seconds: float = MAX_RENDER_SECONDS,
        auto_reload: bool = False,
    ):
        """``auto_reload``: look at each template file's time on every render and compile it
        again when it changed (the console's preview, which must show an edit at once). Off,
        a file is read once per renderer: a daemon takes edits at a reload (which makes a
        new renderer, after checking them), and a merge does not stat every template of its
        chain for each row (5 % of its time)."""
        self.template_dir = Path(template_dir)
        self.max_render_seconds = max_render_seconds
        self._auto_reload = auto_reload
        loader = _ConfinedLoader(self.template_dir)
        self._html_env = _BoundedEnvironment(loader, autoescape=True, auto_reload=auto_reload)
        self._plain_env = _BoundedEnvironment(loader, autoescape=False, auto_reload=auto_reload)
        # (html?, name) -> its chain, when files are read once (not auto_reload)
        self._chains: dict[tuple[bool, str], list[jinja2.Template]] = {}
        self._strings: dict[str, jinja2.Template] = {}
        # (file, html?) -> (compiled template, its parent, extends line); re-parsed when reloaded
        self._parents: dict[tuple[str, bool], tuple[jinja2.Template, str | None, int | None]] = {}
        # Made by the first render that inlines CSS: css_inline (a native library, ~2 MiB
        # resident) is not loaded by `check --offline` or a daemon waiting for its first fire.
        self._inliner: css_inline.CSSInliner | None = None

    def names(self) -> list[str]:
        """Every template available, without the ``.j2`` suffix (layouts included)."""
        if not self.template_dir.is_dir():
            return []
        found = (p.relative_to(self.template_dir).as_posix() for p in self.template_dir.rglob(f"*{SUFFIX}"))
        return sorted(name[: -len(SUFFIX)] for name in found)

    def check(self, name: str) -> None:
        """Load and compile ``name`` and its layouts; TemplateError when it can't make an email."""
        chain = self._chain(self._plain_env, name)
        self._required_blocks(name, chain)

    def undefined_names(self, name: str, known: Collection[str]) -> list[TemplateError]:
        """Static (no rendering): each name ``name`` or a layout it extends reads that is none
        of ``known`` (the context it is rendered with), a global (``range`` …) or defined
        where it is used (set, for, macro, import, with): one TemplateError per name and
        file, at its first use, with "did you mean" when a known name is close (``todya``)."""
        env = self._plain_env
        allowed = {*known, *env.globals}
        problems: list[TemplateError] = []
        for template in self._chain(env, name):
            file = template.name or name + SUFFIX
            source, _, _ = env.loader.get_source(env, file)  # type: ignore[union-attr]
            tree = env.parse(source, file)
            missing = meta.find_undeclared_variables(tree) - allowed
            if not missing:
                continue
            outside = _defined_outside_blocks(tree)
            first_use: dict[str, int] = {}
            for node in tree.find_all(nodes.Name):  # one walk, however many names are missing
                if node.ctx == "load" and node.name in missing:
                    first_use[node.name] = min(first_use.get(node.name, node.lineno), node.lineno)
            for undefined in sorted(missing)[:MAX_UNDEFINED_TOLD]:
                line = first_use.get(undefined)
                if undefined in outside:
                    message = (
                        f"{undefined!r} is defined outside any block, where nothing is run: "
                        "set or import it inside the block that uses it"
                    )
                else:
                    close = difflib.get_close_matches(undefined, sorted(allowed), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; known here: {', '.join(sorted(known))}"
                    message = f"{undefined!r} is not defined{hint}"
                problems.append(TemplateError(message, template=file, lineno=line))
        return problems

    def render(self, name: str, context: Mapping[str, Any]) -> RenderedEmail:
        token = _deadline.set(time.monotonic() + self.max_render_seconds)
        try:
            plain = self._chain(self._plain_env, name)
            has_text, has_html = self._required_blocks(name, plain)
            subject = self._render_block(plain, "subject", context).strip()
            text = self._render_block(plain, "text", context).strip("\n") + "\n" if has_text else None
            html = raw = None
            if has_html:
                raw = self._render_block(self._chain(self._html_env, name), "html", context)
                html = self._inline_css(name, raw)
        finally:
            _deadline.reset(token)
        if text is None:
            # From the html before CSS inlining: same text, without parsing a style attribute
            # on every element (this is most of a merge's render time).
            text = html_to_text(raw or "")
        return RenderedEmail(subject=subject, text=text, html=html)

    def render_string(self, source: str, context: Mapping[str, Any], *, what: str) -> str:
        """Render a one-line template from config (e.g. ``{{ row.email }}``); not escaped."""
        token = _deadline.set(time.monotonic() + self.max_render_seconds)
        try:
            template = self._strings.get(source)
            if template is None:
                template = self._compile_string(source, what)
            try:
                return self._bounded_join(template.root_render_func(template.new_context(dict(context))))
            except Exception as exc:
                raise self._runtime_error(self._plain_env, exc, what) from exc
        finally:
            _deadline.reset(token)

    # -- loading -----------------------------------------------------------------------

    def _compile_string(self, source: str, what: str) -> jinja2.Template:
        try:
            template = self._plain_env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), template=what, lineno=exc.lineno) from exc
        if len(self._strings) >= _MAX_CACHED_STRINGS:
            self._strings.clear()
        self._strings[source] = template
        return template

    def _chain(self, env: jinja2.Environment, name: str) -> list[jinja2.Template]:
        """``name``'s template followed by the layouts it extends, nearest first."""
        key = (env is self._html_env, name)
        cached = self._chains.get(key)
        if cached is not None:
            return cached
        chain = self._load_chain(env, name)
        if not self._auto_reload:
            self._chains[key] = chain
        return chain

    def _load_chain(self, env: jinja2.Environment, name: str) -> list[jinja2.Template]:
        chain: list[jinja2.Template] = []
        current: str | None = name + SUFFIX
        referrer: str | None = None
        ref_line: int | None = None
        while current is not None:
            if len(chain) >= MAX_EXTENDS_DEPTH:
                raise TemplateError(
                    f"extends chain deeper than {MAX_EXTENDS_DEPTH} (a cycle?)", template=referrer, lineno=ref_line
                )
            template = self._load(env, current, referrer, ref_line)
            chain.append(template)
            referrer = current
            current, ref_line = self._parent_of(env, template)
        return chain

    def _load(self, env: jinja2.Environment, file: str, referrer: str | None, line: int | None) -> jinja2.Template:
        try:
            return env.get_template(file)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), template=exc.name or file, lineno=exc.lineno) from exc
        except OutsideTemplates as exc:
            raise TemplateError(str(exc.message), template=referrer or file, lineno=line) from exc
        except jinja2.TemplateNotFound as exc:
            if referrer is None:
                raise TemplateError(f"template not found in {self.template_dir}", template=file) from exc
            raise TemplateError(f"extends a missing template {file!r}", template=referrer, lineno=line) from exc

    def _parent_of(self, env: jinja2.Environment, template: jinja2.Template) -> tuple[str | None, int | None]:
        """The literal parent named by ``{% extends %}`` and its line, or (None, None)."""
        file = template.name or "?"
        key = (file, env is self._html_env)
        cached = self._parents.get(key)
        if cached is not None and cached[0] is template:
            return cached[1], cached[2]
        source, _, _ = env.loader.get_source(env, file)  # type: ignore[union-attr]
        extends = list(env.parse(source, file).find_all(nodes.Extends))
        if not extends:
            self._parents[key] = (template, None, None)
            return None, None
        node = extends[0]
        if len(extends) > 1 or not isinstance(node.template, nodes.Const) or not isinstance(node.template.value, str):
            raise TemplateError(
                "{% extends %} must appear once and name a template literally", template=file, lineno=node.lineno
            )
        self._parents[key] = (template, node.template.value, node.lineno)
        return node.template.value, node.lineno

    def _required_blocks(self, name: str, chain: list[jinja2.Template]) -> tuple[bool, bool]:
        defined = {block for template in chain for block in template.blocks}
        if "subject" not in defined:
            raise TemplateError("no {% block subject %}", template=name + SUFFIX)
        if "text" not in defined and "html" not in defined:
            raise TemplateError("needs a {% block text %} or a {% block html %}", template=name + SUFFIX)
        return "text" in defined, "html" in defined

    # -- rendering ---------------------------------------------------------------------

    def _render_block(self, chain: list[jinja2.Template], block: str, context: Mapping[str, Any]) -> str:
        child = chain[0]
        ctx = child.new_context(dict(context))
        # What {% extends %} does at render time: parents' blocks queue up behind the child's,
        # so {{ super() }} and layout blocks filled by the child both work.
        for parent in chain[1:]:
            for block_name, render_func in parent.blocks.items():
                ctx.blocks.setdefault(block_name, []).append(render_func)
        try:
            return self._bounded_join(ctx.blocks[block][0](ctx))
        except Exception as exc:
            raise self._runtime_error(child.environment, exc, child.name or "?") from exc

    @staticmethod
    def _bounded_join(chunks: Iterator[str]) -> str:
        out: list[str] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_BLOCK_CHARS:
                raise _LimitExceeded(f"output is over the size limit ({MAX_BLOCK_CHARS} characters)")
            _check_deadline()
            out.append(chunk)
        return str("".join(out))

    def _runtime_error(self, env: jinja2.Environment, exc: Exception, fallback: str) -> TemplateError:
        """A TemplateError naming the template file and line where ``exc`` happened."""
        if isinstance(exc, TemplateError):
            return exc
        try:
            env.handle_exception()  # re-raises exc with its traceback mapped to template lines
        except Exception as mapped:  # handle_exception always raises (typed NoReturn)
            frames = traceback.extract_tb(mapped.__traceback__)
        where, line = fallback, None
        root = self.template_dir.resolve()
        for frame in frames:
            path = Path(frame.filename)
            if path.suffix == SUFFIX and path.resolve().is_relative_to(root):
                where, line = path.resolve().relative_to(root).as_posix(), frame.lineno
            elif frame.filename == "<template>":
                where, line = fallback, frame.lineno
        if isinstance(exc, _LimitExceeded | OutsideTemplates):
            message = str(exc) if isinstance(exc, _LimitExceeded) else str(exc.message)
        elif isinstance(exc, jinja2.TemplateNotFound):
            message = f"template not found: {exc.name}"
        elif isinstance(exc, jinja2.exceptions.SecurityError):
            message = f"not allowed in a template: {exc}"
        elif isinstance(exc, jinja2.TemplateError):
            message = exc.message or str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        return TemplateError(message, template=where, lineno=line)

    def _inline_css(self, name: str, html: str) -> str:
        import css_inline

        if self._inliner is None:
            # Remote stylesheets would be network I/O in the middle of a pure render.
            self._inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
        try:
            return self._inliner.inline(html)
        except (ValueError, css_inline.InlineError) as exc:
            raise TemplateError(f"CSS could not be inlined: {exc}", template=name + SUFFIX) from exc
