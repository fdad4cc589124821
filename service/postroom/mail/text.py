"""HTML → readable plain text: the text/plain twin of an html-only email we send, and the body
rules and reply templates see of an html-only message we receive. One function for both.

Small on purpose (html.parser's events, see below): paragraphs and line breaks, lists as ``- item``
(``1. item`` when ordered), links as ``text (url)``, tables as aligned rows with cells
separated by `` | ``. Whatever sits in ``<head>``, ``<style>``, ``<script>`` and the like is
dropped. Whitespace collapses as HTML's does (ASCII whitespace only: ``&nbsp;`` stays). It
never raises: incoming HTML is hostile, and a part html.parser gives up on is returned with
its tags stripped instead.

Speed: html.parser is pure Python and was a third of a mail merge's time. The HTML we render
ourselves is plain markup (tags with simple attributes, text, comments, a doctype), so a
regular-expression tokenizer (``_simple_events``) makes html.parser's events for it at a
fraction of the cost. It only takes input it can read the way html.parser would; anything
else (a stray "<", an odd attribute, a processing instruction, ``<![CDATA[``) goes to
html.parser itself, so the text is the same, byte for byte, either way (test_text_fast.py
compares both on generated HTML and every template and corpus file).
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

__all__ = ["html_to_text"]

# Elements whose content is never shown to a reader.
_SKIP = frozenset({"head", "style", "script", "title", "template", "noscript"})
# Elements that stand as their own paragraph.
_PARAGRAPH = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "main",
        "aside",
        "nav",
        "blockquote",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "address",
        "figure",
        "form",
        "fieldset",
        "dl",
        "center",
    }
)
_LINE = frozenset({"dt", "dd", "caption", "figcaption", "tbody", "thead", "tfoot"})
# Columns wider than this are not padded: aligning them would push every row off screen.
_MAX_PAD_WIDTH = 40
# HTML collapses ASCII whitespace only; a no-break space (&nbsp;) is meant to stay.
_WHITESPACE = re.compile(r"[ \t\n\r\f]+")
# A tag ends at the next "<" too: "<<<<…" is then one short try per "<", not a scan to the end
# from each (quadratic: 16k of them took a second).
_TAG = re.compile(r"<[^<>]*>")


class _Sink:
    """Collects text with collapsed whitespace; knows how many newlines end it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.newlines = 2  # as if right after a paragraph: no leading blank lines
        self.space = True

    def text(self, value: str, *, pre: bool = False) -> None:
        if not pre:
            value = _WHITESPACE.sub(" ", value)
            if self.space and value.startswith(" "):
                value = value[1:]
        if not value:
            return
        self.parts.append(value)
        stripped = value.rstrip("\n")
        self.newlines = len(value) - len(stripped) if stripped != value else 0
        self.space = value.endswith((" ", "\n"))

    def breaks(self, count: int) -> None:
        """End the current line and leave ``count - 1`` blank lines (never more)."""
        if not self.parts:
            return
        if self.newlines < count:
            if self.newlines == 0 and self.parts[-1].endswith(" "):
                self.parts[-1] = self.parts[-1].rstrip(" ")
            self.parts.append("\n" * (count - self.newlines))
            self.newlines = count
        self.space = True

    def value(self) -> str:
        return "".join(self.parts)


class _Table:
    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.header_rows: set[int] = set()
        self.row: list[str] | None = None
        self.row_all_th = True
        self.cell: _Sink | None = None

    def render(self) -> str:
        rows = [r for r in self.rows if any(c for c in r)]
        if not rows:
            return ""
        columns = max(len(r) for r in rows)
        widths = [0] * columns
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        widths = [w if w <= _MAX_PAD_WIDTH else 0 for w in widths]
        lines = []
        for index, row in enumerate(self.rows):
            if not any(c for c in row):
                continue
            cells = row + [""] * (columns - len(row))
            lines.append(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
            if index in self.header_rows:
                lines.append("-+-".join("-" * max(w, 1) for w in widths))
        return "\n".join(lines)


class _TextMaker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sinks: list[_Sink] = [_Sink()]
        self.skip_depth = 0
        self.pre_depth = 0
        self.lists: list[list[int]] = []  # [ordered?, counter] per open list
        self.links: list[tuple[str, _Sink, int]] = []
        self.tables: list[_Table] = []

    @property
    def sink(self) -> _Sink:
        return self.sinks[-1]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
            return
        if self.skip_depth:
            return
        attr = dict(attrs)
        if tag in _PARAGRAPH or (tag in ("ul", "ol") and not self.lists):
            self.sink.breaks(2)
        elif tag in _LINE:
            self.sink.breaks(1)
        if tag == "br":
            self.sink.breaks(1)
        elif tag == "hr":
            self.sink.breaks(2)
            self.sink.text("-" * 40, pre=True)
            self.sink.breaks(2)
        elif tag == "pre":
            self.sink.breaks(2)
            self.pre_depth += 1
        elif tag in ("ul", "ol"):
            self.lists.append([tag == "ol", 0])
        elif tag == "li":
            self._start_item()
        elif tag == "a":
            self.links.append((attr.get("href") or "", self.sink, len(self.sink.parts)))
        elif tag == "img" and attr.get("alt"):
            self.sink.text(f" {attr['alt']} ")
        elif tag == "table":
            self.sink.breaks(2)
            self.tables.append(_Table())
        elif tag == "tr" and self.tables:
            self._end_row()
            self.tables[-1].row = []
            self.tables[-1].row_all_th = True
        elif tag in ("td", "th") and self.tables:
            table = self.tables[-1]
            self._end_cell()
            if table.row is None:
                table.row, table.row_all_th = [], True
            table.row_all_th &= tag == "th"
            table.cell = _Sink()
            self.sinks.append(table.cell)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag in _PARAGRAPH or tag == "pre":
            self.sink.breaks(2)
        elif tag in _LINE or tag == "li":
            self.sink.breaks(1)
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        elif tag in ("ul", "ol") and self.lists:
            self.lists.pop()
            self.sink.breaks(1 if self.lists else 2)
        elif tag == "a" and self.links:
            self._end_link()
        elif tag in ("td", "th"):
            self._end_cell()
        elif tag == "tr":
            self._end_row()
        elif tag == "table" and self.tables:
            self._end_row()
            table = self.tables.pop()
            self.sink.breaks(2)
            self.sink.text(table.render(), pre=True)
            self.sink.breaks(2)

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.tables and self.tables[-1].cell is None and not data.strip():
            return  # whitespace between table tags
        self.sink.text(data, pre=bool(self.pre_depth))

    def _start_item(self) -> None:
        self.sink.breaks(1)
        depth = max(len(self.lists), 1)
        marker = "-"
        if self.lists:
            self.lists[-1][1] += 1
            if self.lists[-1][0]:
                marker = f"{self.lists[-1][1]}."
        self.sink.text("  " * (depth - 1) + marker + " ", pre=True)
        self.sink.space = True

    def _end_link(self) -> None:
        href, sink, start = self.links.pop()
        if sink is not self.sink or not href or href.startswith(("#", "javascript:")):
            return
        label = "".join(sink.parts[start:]).strip()
        target = href[len("mailto:") :] if href.startswith("mailto:") else href
        if label in (href, target):
            return
        sink.text(f" ({target})" if label else target)

    def _end_cell(self) -> None:
        table = self.tables[-1] if self.tables else None
        if table is None or table.cell is None:
            return
        text = _WHITESPACE.sub(" ", table.cell.value()).strip()
        self.sinks.pop()
        table.cell = None
        if table.row is None:
            table.row = []
        table.row.append(text)

    def _end_row(self) -> None:
        if not self.tables:
            return
        self._end_cell()
        table = self.tables[-1]
        if table.row is not None:
            if table.row and table.row_all_th:
                table.header_rows.add(len(table.rows))
            table.rows.append(table.row)
            table.row = None

    def result(self) -> str:
        # An element left open whose content is dropped (``<table><head>``) would make the
        # table end below a no-op, and this loop endless: nothing follows the input's end.
        self.skip_depth = 0
        while self.tables:
            self.handle_endtag("table")
        lines = [line.rstrip() for line in self.sinks[0].value().split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


# What _simple_events reads; each piece is a form html.parser reads the same way. Separators are
# ASCII whitespace only (html.parser's \s also takes Unicode spaces, in places where their
# meaning is subtle), unquoted values end at whitespace or ">" (a "/" ends them for html.parser
# only when whitespace comes first), names are plain ASCII: anything else goes to html.parser.
_WS = "[ \t\n\r\f]"
_QUOTED = "\"[^\"]*\"|'[^']*'"
_UNQUOTED = "[^\\s\"'=<>`/]+"
_NAME = "[a-zA-Z_:][-a-zA-Z0-9_:.]*"
_SIMPLE_TOKEN = re.compile(
    "([^<]+)"  # 1: text
    # 2: start tag, 3: its attributes, 4: "/" when self-closing
    f"|<([a-zA-Z][a-zA-Z0-9-]*)((?:{_WS}+{_NAME}(?:{_WS}*={_WS}*(?:{_QUOTED}|{_UNQUOTED}(?={_WS}|>)))?)*){_WS}*(/?)>"
    f"|</([a-zA-Z][a-zA-Z0-9-]*){_WS}*>"  # 5: end tag
    "|<!--(?:[^-]|-(?!-))*-->"  # a comment without "--" inside
    "|<![dD][oO][cC][tT][yY][pP][eE][^<>]*>"
)
# One attribute of a start tag _SIMPLE_TOKEN took: name, "=" with its spaces, value.
# (Matched within the attributes alone: an unquoted value ends at whitespace or the end.)
_SIMPLE_ATTRIBUTE = re.compile(f"{_WS}+({_NAME})(?:({_WS}*={_WS}*)({_QUOTED}|{_UNQUOTED}(?={_WS}|$)))?")
# html.parser's script and style content: raw up to the end tag, as it finds it.
_CDATA_ELEMENTS = frozenset(HTMLParser.CDATA_CONTENT_ELEMENTS)
_CDATA_END = {name: re.compile(rf"</\s*{name}\s*>", re.I) for name in _CDATA_ELEMENTS}

_Event = tuple[int, str, list[tuple[str, str | None]] | None]
_DATA, _START, _END = 0, 1, 2


def _simple_events(html: str) -> list[_Event] | None:
    """html.parser's events for ``html`` (``convert_charrefs=True``; a self-closing tag is a
    start and an end, as its default handle_startendtag makes them), or None when ``html``
    has anything this tokenizer does not read exactly as html.parser does."""
    events: list[_Event] = []
    append = events.append
    match = _SIMPLE_TOKEN.match
    pos, end = 0, len(html)
    while pos < end:
        token = match(html, pos)
        if token is None:
            return None
        pos = token.end()
        text, tag, attributes, slash, closing = token.groups()
        if text is not None:
            append((_DATA, unescape(text), None))
        elif tag is not None:
            tag = tag.lower()
            attrs: list[tuple[str, str | None]] = []
            if attributes:
                for name, equals, value in _SIMPLE_ATTRIBUTE.findall(attributes):
                    if not equals:
                        attrs.append((name.lower(), None))
                        continue
                    if value[:1] in ("'", '"'):
                        value = value[1:-1]
                    attrs.append((name.lower(), unescape(value) if value else value))
            append((_START, tag, attrs))
            if slash:
                append((_END, tag, None))
            elif tag in _CDATA_ELEMENTS:
                close = _CDATA_END[tag].search(html, pos)
                if close is None:
                    return None
                if close.start() > pos:
                    append((_DATA, html[pos : close.start()], None))
                append((_END, tag, None))
                pos = close.end()
        elif closing is not None:
            append((_END, closing.lower(), None))
    return events


def _open_brackets_escaped(html: str) -> str:
    """``html`` with each "<" that no ">" closes before the next "<" written as "&lt;".

    html.parser (Python 3.11) looks for the end of such a tag all the way to the end of its
    input, from every one of them: 64k characters of ``<aa`` took 2.5 s, quadratic, and an
    email's HTML part is anyone's to write. One pass; the next ">" is looked for again only
    once the scan has passed it."""
    pieces: list[str] = []
    start = 0
    end = len(html)
    gt = -1
    lt = html.find("<")
    while lt >= 0:
        following = html.find("<", lt + 1)
        if gt < lt:
            gt = html.find(">", lt + 1)
            if gt < 0:
                gt = end  # none at all from here on
        if gt == end or (following >= 0 and following < gt):
            pieces.append(html[start:lt])
            pieces.append("&lt;")
            start = lt + 1
        lt = following
    pieces.append(html[start:])
    return "".join(pieces)


def html_to_text(html: str) -> str:
    """A plain-text rendering of ``html`` for a reader, ending with one newline ("" when
    there is no text)."""
    maker = _TextMaker()
    html = _open_brackets_escaped(html)
    try:
        events = _simple_events(html)
        if events is None:
            maker.feed(html)
            maker.close()
        else:
            for kind, value, attrs in events:
                if kind == _DATA:
                    maker.handle_data(value)
                elif kind == _START:
                    maker.handle_starttag(value, attrs or [])
                else:
                    maker.handle_endtag(value)
        text = maker.result()
    except Exception:  # html.parser still raises on some broken markup (``<![x[``)
        stripped = unescape(_TAG.sub(" ", html))
        lines = (_WHITESPACE.sub(" ", line).strip() for line in stripped.splitlines())
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text else ""
