"""html_to_text reads the HTML we render with a regular-expression tokenizer instead of
html.parser (a third of a merge's time). The text must stay what html.parser made, byte for
byte: here the reference is the html.parser route as it was (``_TextMaker`` fed by
``HTMLParser.feed``), compared with html_to_text on generated HTML, on every template's
rendered html and on every text/html part in the corpus."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from html import unescape
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from postroom.mail import text
from postroom.mail.templates import TemplateRenderer
from postroom.mail.text import html_to_text

from tests.support.data import corpus_files

ROOT = Path(__file__).resolve().parent.parent


def reference(html: str) -> str:
    """html_to_text as it was before the tokenizer: every input through html.parser."""
    maker = text._TextMaker()
    html = text._open_brackets_escaped(html)
    try:
        maker.feed(html)
        maker.close()
        result = maker.result()
    except Exception:
        stripped = unescape(text._TAG.sub(" ", html))
        lines = (text._WHITESPACE.sub(" ", line).strip() for line in stripped.splitlines())
        result = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return result + "\n" if result else ""


def takes_fast_route(html: str) -> bool:
    return text._simple_events(text._open_brackets_escaped(html)) is not None


TAGS = ["p", "div", "br", "a", "table", "tr", "td", "th", "ul", "ol", "li", "pre", "hr", "img", "span"]
TAGS += ["b", "h1", "head", "title", "style", "script", "tbody", "dl", "dt", "dd", "DIV", "Td", "x-y"]
NAMES = ["href", "alt", "HREF", "class", "data-x", "a:b", "_u", "x.y"]
VALUES = ["", "x", "https://x.test/a?b=1&amp;c=2", "mailto:a@b.test", "#top", "javascript:x", "a/b", "&lt;&gt;", " "]
VALUES += ["caf&eacute;", "a\xa0b", "x>y", "<b>", "&#x41;", "&bogus"]
SPACES = [" ", "  ", "\n", "\t", "\r\n", "\f", "\x0b", "\xa0", "\u2003", ""]
WORDS = ["hello", "Total", "caf&eacute;", "a&amp;b", "&nbsp;", "&lt;", "x < y", "1 > 0", "&#169;", "&", "A&B;", "-"]


CLEAN_VALUES = [v for v in VALUES if not any(c in v for c in "<> \xa0")]


@st.composite
def attribute(draw: st.DrawFn, clean: bool) -> str:
    """One attribute; ``clean``: in a form the fast route reads (else any, odd ones too)."""
    name = draw(st.sampled_from(NAMES))
    if clean:
        value = draw(st.sampled_from(CLEAN_VALUES))
        form = draw(st.sampled_from(['="{}"', "='{}'", "={}" if value else '="{}"', " = '{}'", ""]))
        space = draw(st.sampled_from([" ", "\n ", "  ", "\t"]))
    else:
        value = draw(st.sampled_from(VALUES))
        form = draw(st.sampled_from(['="{}"', "='{}'", "={}", " = {}", "", '=="{}"', "={}/"]))
        space = draw(st.sampled_from([" ", "\n ", "  ", "\t", "/", ""]))
    return space + name + form.format(value)


@st.composite
def piece(draw: st.DrawFn, clean: bool) -> str:
    """A tag, text, comment, space or (unless ``clean``) something html.parser reads oddly."""
    kind = draw(st.integers(0, 9))
    tag = draw(st.sampled_from(TAGS))
    if clean and kind in (3, 5):
        return draw(st.sampled_from([f"</{tag}>", f"</{tag} >", f"</{tag}\n>"]))
    if kind <= 2:
        attributes = "".join(draw(st.lists(attribute(clean), max_size=3)))
        close = draw(st.sampled_from([">", " >", "/>", " />", "\n>"]))
        return f"<{tag}{attributes}{close}"
    if kind == 3:
        return draw(st.sampled_from([f"</{tag}>", f"</{tag} >", f"</ {tag}>", f"</{tag}\n>", f"</{tag} x>", "</>"]))
    if kind == 4:
        return draw(st.sampled_from(["<!-- c -->", "<!---->", "<!-- a -- b -->", "<!-- x --!>", "<!DOCTYPE html>"]))
    if kind == 5:
        return draw(st.sampled_from(["<", ">", "<?xml x?>", "<![CDATA[x]]>", "<!x>", "<![x[", "</", "<1>", "&"]))
    if kind == 6:
        return draw(st.sampled_from(SPACES))
    return draw(st.sampled_from(WORDS)) + draw(st.sampled_from(SPACES))


@settings(max_examples=1500, deadline=None)
@given(
    st.one_of(
        st.lists(piece(clean=True), max_size=40).map("".join),
        st.lists(piece(clean=False), max_size=40).map("".join),
    )
)
@example('<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td><a href="x">y</a></td></tr></table>')
@example("<style>p { color: red }</STYLE >x<script type=text/javascript>a<b</script>y")
@example("<ul><li>a<ol><li>b</ol></ul><pre>  x\n  y</pre><br/><img alt='pic' src=x>")
def test_the_text_is_what_html_parser_made(html: str) -> None:
    assert html_to_text(html) == reference(html)


def test_generated_clean_html_takes_the_fast_route() -> None:
    """The comparison above means something only if the tokenizer runs: clean pieces (ASCII
    spaces, plain attributes, no stray "<") must not all fall back to html.parser."""
    seen: list[bool] = []

    @settings(max_examples=200, deadline=None)
    @given(st.lists(piece(clean=True), max_size=40).map("".join))
    def collect(html: str) -> None:
        seen.append(takes_fast_route(html))

    collect()
    assert sum(seen) >= len(seen) // 2


def rendered_html(name: str) -> str | None:
    renderer = TemplateRenderer(ROOT / "templates")
    row = {"name": "Ana & Bo <x>", "email": "a@b.test", "balance": 12.5}
    context = {
        "row": row,
        "customers": [row],
        "orders": [{"id": 1, "total": 3.5, "customer": "Ana"}],
        "job": name,
        "now": datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        "today": "2026-01-02",
        "fire_time": datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    }
    try:
        rendered = renderer.render(name, context)
    except Exception:
        return None  # a layout, or a template wanting other data: its source is compared below
    return rendered.html


def html_parts(path: Path) -> list[str]:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    out = []
    for part in message.walk():
        if part.get_content_type() == "text/html" and isinstance(part, EmailMessage):
            try:
                out.append(str(part.get_content()))
            except (LookupError, ValueError):
                out.append(part.get_payload(decode=True).decode("utf-8", "replace"))  # type: ignore[union-attr]
    return out


def test_every_template_and_corpus_html_gives_the_same_text() -> None:
    sources = [p.read_text() for p in sorted((ROOT / "templates").glob("*.j2"))]
    sources += [html for name in ("statement", "orders_report", "out_of_office") if (html := rendered_html(name))]
    sources += [html for path in corpus_files() for html in html_parts(path)]
    assert len(sources) >= 12
    for html in sources:
        assert html_to_text(html) == reference(html)
    # the rendered templates are what a merge converts: they must take the fast route
    rendered = [html for name in ("statement", "orders_report") if (html := rendered_html(name))]
    assert rendered
    assert all(takes_fast_route(html) for html in rendered)


def test_a_table_left_open_inside_dropped_content_ends() -> None:
    """``<head>`` (or style, script …) left open in an open table: the text ends (html.parser's
    route looped for ever closing the table while the dropped part was still open)."""
    assert html_to_text("<table><tr><td>a</td><td>b<head>x") == "a | b\n"
