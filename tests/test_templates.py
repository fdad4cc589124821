"""Template rendering: inheritance, strictness, escaping, CSS inlining, html→text, bounds."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from postroom.errors import TemplateError
from postroom.mail import templates as templates_mod
from postroom.mail.templates import RenderedEmail, TemplateRenderer
from postroom.mail.text import html_to_text

REPO_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

LAYOUT = """\
{% block html %}
<html><head><style>p { color: #ff0000; } .big { font-size: 20px; }</style></head>
<body>
{% block content %}{% endblock %}
<p class="big">{% block footer %}footer for {{ who }}{% endblock %}</p>
</body></html>
{% endblock %}
"""


def write(directory: Path, **files: str) -> TemplateRenderer:
    for name, source in files.items():
        (directory / f"{name}.j2").write_text(source, encoding="utf-8")
    return TemplateRenderer(directory)


def test_extends_layout_renders_all_parts(tmp_path: Path) -> None:
    renderer = write(
        tmp_path,
        layout=LAYOUT,
        hello="""{% extends "layout.j2" %}
{% block subject %}  Hello {{ who }}  {% endblock %}
{% block content %}<p>Hi {{ who }}</p>{% endblock %}
{% block footer %}{{ super() }}!{% endblock %}
{% block text %}Hi {{ who }}{% endblock %}
""",
    )
    email = renderer.render("hello", {"who": "Bob"})
    assert email.subject == "Hello Bob"
    assert email.text == "Hi Bob\n"
    assert email.html is not None
    assert "Hi Bob</p>" in email.html
    assert "footer for Bob!" in email.html
    assert renderer.names() == ["hello", "layout"]


def test_html_is_autoescaped_but_subject_and_text_are_not(tmp_path: Path) -> None:
    renderer = write(
        tmp_path,
        mail="""{% block subject %}{{ name }}{% endblock %}
{% block text %}{{ name }}{% endblock %}
{% block html %}<p>{{ name }}</p>{% endblock %}
""",
    )
    email = renderer.render("mail", {"name": "Tom & <Jerry>"})
    assert email.subject == "Tom & <Jerry>"
    assert email.text == "Tom & <Jerry>\n"
    assert email.html is not None
    assert "Tom &amp; &lt;Jerry&gt;" in email.html
    assert "<Jerry>" not in email.html


def test_css_is_inlined_and_style_block_removed(tmp_path: Path) -> None:
    renderer = write(
        tmp_path,
        layout=LAYOUT,
        mail='{% extends "layout.j2" %}{% block subject %}s{% endblock %}{% block content %}<p>x</p>{% endblock %}',
    )
    html = renderer.render("mail", {"who": "a"}).html
    assert html is not None
    assert "<style" not in html
    assert '<p style="color: #ff0000;">x</p>' in html
    assert "font-size: 20px" in html


def test_text_derived_from_html_when_no_text_block(tmp_path: Path) -> None:
    renderer = write(
        tmp_path,
        mail="""{% block subject %}Report{% endblock %}
{% block html %}<h1>Orders</h1>
<table><tr><th>ID</th><th>Customer</th></tr>
{% for o in orders %}<tr><td>{{ o.id }}</td><td>{{ o.customer }}</td></tr>{% endfor %}
</table>{% endblock %}
""",
    )
    email = renderer.render("mail", {"orders": [{"id": 1, "customer": "Acme"}, {"id": 22, "customer": "B & C"}]})
    assert email.text == "Orders\n\nID | Customer\n---+---------\n1  | Acme\n22 | B & C\n"


def test_html_to_text_paragraphs_lists_links_and_skipped_parts() -> None:
    html = """<html><head><title>T</title><style>p{}</style></head><body>
<p>Hello<br>there,   see <a href="https://x.test/a">the page</a>.</p>
<ul><li>one</li><li>two<ol><li>sub</li></ol></li></ul><script>alert(1)</script><p>end</p></body></html>"""
    assert html_to_text(html) == ("Hello\nthere, see the page (https://x.test/a).\n\n- one\n- two\n  1. sub\n\nend\n")


def test_missing_variable_names_template_and_line(tmp_path: Path) -> None:
    renderer = write(
        tmp_path, mail="{% block subject %}s{% endblock %}\n{% block text %}\nline two\n{{ nope }}\n{% endblock %}"
    )
    with pytest.raises(TemplateError) as info:
        renderer.render("mail", {})
    assert info.value.template == "mail.j2"
    assert info.value.lineno == 4
    assert "nope" in str(info.value)


def test_error_inside_layout_names_the_layout(tmp_path: Path) -> None:
    renderer = write(
        tmp_path,
        layout="{% block html %}\n<p>\n{{ missing_in_layout }}\n</p>{% block content %}{% endblock %}{% endblock %}",
        mail='{% extends "layout.j2" %}{% block subject %}s{% endblock %}{% block content %}c{% endblock %}',
    )
    with pytest.raises(TemplateError) as info:
        renderer.render("mail", {})
    assert (info.value.template, info.value.lineno) == ("layout.j2", 3)


@pytest.mark.parametrize(
    ("files", "where"),
    [
        ({"mail": "{% block subject %}s{% endblock %}\n{% block text %}\n{% if %}\n{% endblock %}"}, "mail.j2"),
        (
            {
                "layout": "{% block html %}\n\n{{ x + }}{% endblock %}",
                "mail": '{% extends "layout.j2" %}{% block subject %}s{% endblock %}',
            },
            "layout.j2",
        ),
    ],
)
def test_syntax_error_names_the_broken_file_and_line(tmp_path: Path, files: dict[str, str], where: str) -> None:
    renderer = write(tmp_path, **files)
    with pytest.raises(TemplateError) as info:
        renderer.check("mail")
    assert (info.value.template, info.value.lineno) == (where, 3)


def test_missing_template_and_missing_layout(tmp_path: Path) -> None:
    renderer = write(tmp_path, mail='{% block subject %}s{% endblock %}\n{% extends "nolayout.j2" %}')
    with pytest.raises(TemplateError) as info:
        renderer.check("absent")
    assert info.value.template == "absent.j2"
    with pytest.raises(TemplateError) as info:
        renderer.check("mail")
    assert (info.value.template, info.value.lineno) == ("mail.j2", 2)
    assert "nolayout.j2" in str(info.value)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("{% block text %}t{% endblock %}", "subject"),
        ("{% block subject %}s{% endblock %}", "text"),
    ],
)
def test_check_requires_subject_and_a_body(tmp_path: Path, source: str, fragment: str) -> None:
    renderer = write(tmp_path, mail=source)
    with pytest.raises(TemplateError, match=fragment):
        renderer.check("mail")
    with pytest.raises(TemplateError, match=fragment):
        renderer.render("mail", {})


def test_sandbox_blocks_unsafe_attribute_access(tmp_path: Path) -> None:
    renderer = write(
        tmp_path,
        mail="{% block subject %}s{% endblock %}\n{% block text %}\n{{ obj.__class__.__subclasses__() }}{% endblock %}",
    )
    with pytest.raises(TemplateError) as info:
        renderer.render("mail", {"obj": object()})
    assert (info.value.template, info.value.lineno) == ("mail.j2", 3)


def test_sandbox_refuses_mutating_job_data(tmp_path: Path) -> None:
    renderer = write(
        tmp_path, mail="{% block subject %}{{ rows.append(1) }}{% endblock %}{% block text %}t{% endblock %}"
    )
    rows: list[int] = []
    with pytest.raises(TemplateError):
        renderer.render("mail", {"rows": rows})
    assert rows == []


@pytest.mark.parametrize(
    "expression",
    [
        "'x' * 100000000",
        "range(1000000)|list",
        "'a'|center(100000000)",
        "10 ** 100000",
        # each of these allocates a gigabyte or more before the output limit could look
        "'%999999999s'|format(1)",
        "'%999999999s' % 1",
        "'%.999999999f' % 1.5",
        "'%*d' % (999999999, 1)",
        "'{:999999999}'.format(1)",
        "'{:{w}}'.format(1, w=999999999)",
        "'{x:>999999999}'.format_map({'x': 1})",
        "('{0:1999999}' * 2).format(1)",
        "'x'.ljust(999999999)",
        "'\t'.expandtabs(999999999)",
        "big|wordwrap(1, wrapstring='xxxxxxxxxx')",
        "big|replace('a', big)",
        "big.replace('a', big)",
        "([big] * 5)|join(big)",
        "big.join(range(1000)|map('string'))",
        "big|indent(big)",
        "[1]|slice(999999999)|list|length",
        "range(2)|batch(999999999, 'x')|list|length",
        "lipsum(999999)",
    ],
)
def test_size_bounds(tmp_path: Path, expression: str) -> None:
    """Refused before the value is built: "over the limit", not the output's "over the size limit"."""
    renderer = write(
        tmp_path, mail=f"{{% block subject %}}s{{% endblock %}}{{% block text %}}{{{{ {expression} }}}}{{% endblock %}}"
    )
    with pytest.raises(TemplateError, match="over the limit"):
        renderer.render("mail", {"big": "a " * 600_000})


@pytest.mark.parametrize(
    "body",
    [
        "{% set ns = namespace(x=big) %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
        "{% set ns = namespace(x=big) %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
        "{% set a = big ~ big %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{% set e = d ~ d %}"
        "{% set f = e ~ e %}{% set g = f ~ f %}{% set h = g ~ g %}{% set i = h ~ h %}{{ i|length }}",
        "{% macro grow(s, n) %}{{ grow(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ grow(big, 40) }}",
    ],
)
def test_doubling_a_string_stops_at_the_limit(tmp_path: Path, body: str) -> None:
    renderer = write(tmp_path, mail=f"{{% block subject %}}s{{% endblock %}}{{% block text %}}{body}{{% endblock %}}")
    with pytest.raises(TemplateError, match=r"would make .* characters, over the limit"):
        renderer.render("mail", {"big": "a " * 600_000})


def test_bounded_operations_still_work(tmp_path: Path) -> None:
    renderer = write(
        tmp_path,
        mail="{% block subject %}s{% endblock %}{% block text %}"
        "{{ '%5s|%-3d|%.2f' % ('ab', 7, 3.14159) }} {{ '%(a)s'|format(a=1) }} "
        "{{ '{:>4}|{:.1f}'.format('x', 2.25) }} {{ '{n}'.format_map({'n': 3}) }} "
        "{{ 'a b c d'|wordwrap(3, wrapstring='/') }} {{ 'abc'|replace('b', 'xx') }} "
        "{{ range(3)|join(',') }} {{ '-'.join(['p', 'q']) }} {{ 'ab'.ljust(4) ~ '|' }} "
        "{{ 'x'|center(5) ~ '|' }} {{ range(5)|batch(2, 0)|list|length }} "
        "{{ 'a' + 'b' }} {{ ([1] + [2])|length }} {{ 'x\ny'|indent(2) }}"
        "{% endblock %}",
    )
    assert renderer.render("mail", {}).text == (
        "   ab|7  |3.14 1    x|2.2 3 a b/c d axxc 0,1,2 p-q ab  |   x  | 3 ab 2 x\n  y\n"
    )


def test_output_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templates_mod, "MAX_BLOCK_CHARS", 1000)
    renderer = write(
        tmp_path,
        mail="{% block subject %}s{% endblock %}"
        "{% block text %}{% for i in range(200) %}0123456789{% endfor %}{% endblock %}",
    )
    with pytest.raises(TemplateError, match="size limit"):
        renderer.render("mail", {})


def test_time_limit(tmp_path: Path) -> None:
    (tmp_path / "mail.j2").write_text("{% block subject %}{{ 'a'|upper }}{% endblock %}{% block text %}t{% endblock %}")
    renderer = TemplateRenderer(tmp_path, max_render_seconds=0)
    with pytest.raises(TemplateError, match="time limit"):
        renderer.render("mail", {})


def test_money_and_number_filters(tmp_path: Path) -> None:
    renderer = write(
        tmp_path,
        mail="{% block subject %}{{ a|money }} {{ a|money('EUR') }} {{ b|number }} {{ c|number(2) }}{% endblock %}"
        "{% block text %}t{% endblock %}",
    )
    subject = renderer.render("mail", {"a": 1234.5, "b": 1234567, "c": 0.125}).subject
    assert subject == "1,234.50 1,234.50 EUR 1,234,567 0.13"


def test_render_string_for_config_values(tmp_path: Path) -> None:
    renderer = TemplateRenderer(tmp_path)
    row = {"email": "a&b@x.test"}
    assert renderer.render_string("{{ row.email }}", {"row": row}, what="jobs.statements.to[0]") == "a&b@x.test"
    with pytest.raises(TemplateError) as info:
        renderer.render_string("{{ row.mail }}", {"row": row}, what="jobs.statements.to[0]")
    assert info.value.template == "jobs.statements.to[0]"
    with pytest.raises(TemplateError) as info:
        renderer.render_string("{{ row.email ", {"row": row}, what="jobs.x.to[1]")
    assert info.value.template == "jobs.x.to[1]"


def test_shipped_example_templates_render() -> None:
    renderer = TemplateRenderer(REPO_TEMPLATES)
    for name in ("orders_report", "statement", "out_of_office"):
        renderer.check(name)
    report = renderer.render(
        "orders_report",
        {
            "orders": [{"id": 1, "customer": "Acme & Co", "total": 12.5}, {"id": 2, "customer": "Bolt", "total": 1000}],
            "rates": {"EUR": 1.0, "USD": 1.08},
            "job": "orders-report",
            "now": datetime(2026, 1, 5, 8, 0, tzinfo=UTC),
            "today": "2026-01-05",
        },
    )
    assert report.subject == "[report] Orders for 2026-01-05"
    assert report.html is not None and "Acme &amp; Co" in report.html and "<style" not in report.html
    assert "1,012.50" in report.html and "1,012.50" in report.text and "Acme & Co" in report.text
    statement = renderer.render(
        "statement", {"row": {"name": "Zoë", "email": "z@x.test", "balance": 42}, "today": "2026-02-01"}
    )
    assert "42.00" in statement.text
    reply = renderer.render("out_of_office", {"message": SimpleNamespace(subject="Lunch?", from_="A <a@x.test>")})
    assert reply == RenderedEmail(subject="Auto: Lunch?", text=reply.text, html=None)
    assert "Lunch?" in reply.text


def test_only_an_auto_reload_renderer_sees_an_edit(tmp_path: Path) -> None:
    """A merge reads each template file once (no stat per row); the preview asks for
    auto_reload and shows an edited layout at once. A daemon takes edits at a reload."""
    write(tmp_path, layout="{% block text %}v1 {% block body %}{% endblock %}{% endblock %}")
    write(tmp_path, mail='{% extends "layout.j2" %}{% block subject %}s{% endblock %}{% block body %}x{% endblock %}')
    once, preview = TemplateRenderer(tmp_path), TemplateRenderer(tmp_path, auto_reload=True)
    assert once.render("mail", {}).text == preview.render("mail", {}).text == "v1 x\n"
    layout = tmp_path / "layout.j2"
    layout.write_text("{% block text %}v2 {% block body %}{% endblock %}{% endblock %}")
    os.utime(layout, (time.time() + 5, time.time() + 5))  # a new mtime even on a coarse clock
    assert preview.render("mail", {}).text == "v2 x\n"
    assert once.render("mail", {}).text == "v1 x\n"
    assert TemplateRenderer(tmp_path).render("mail", {}).text == "v2 x\n"
