"""Money, numbers and dates in a reader's conventions (Babel's CLDR data), per filter argument
or per job `locale:`; without either, the English forms templates have always had."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from postroom.config import Settings, load_config
from postroom.errors import ConfigError, TemplateError
from postroom.mail.locale_filters import rendering_locale
from postroom.mail.templates import TemplateRenderer

from tests.test_job_extras import build, project

BERLIN_WINTER = timezone(timedelta(hours=1))


def render(tmp_path, source: str, **context) -> str:
    (tmp_path / "t.j2").write_text("{% block subject %}s{% endblock %}{% block text %}" + source + "{% endblock %}")
    return TemplateRenderer(tmp_path).render("t", context).text.strip()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ 1234.5|money }}", "1,234.50"),  # as before locales: no Babel, English grouping
        ('{{ 1234.5|money("EUR") }}', "1,234.50 EUR"),
        ('{{ 1234.5|money("EUR", "de_DE") }}', "1.234,50\xa0€"),
        ('{{ 1234.5|money("EUR", "fr_FR") }}', "1\u202f234,50\xa0€"),
        ('{{ 1234.5|money("USD", "en_US") }}', "$1,234.50"),
        ('{{ 1234.5|money("JPY", "ja_JP") }}', "￥1,235"),  # no minor unit; half up, as on an invoice
        ('{{ 0.125|number(2, "de_DE") }}', "0,13"),
        ('{{ 1234567|number(0, "en_IN") }}', "12,34,567"),
        ('{{ "2026-11-29"|date("long", "fr_FR") }}', "29 novembre 2026"),
        ('{{ "2026-11-29"|date("d MMMM y", "de_DE") }}', "29 November 2026"),
        ('{{ "2026-11-29"|date }}', "Nov 29, 2026"),
    ],
)
def test_filters_write_as_the_locale_does(tmp_path, source, expected):
    assert render(tmp_path, source) == expected


def test_a_datetime_keeps_its_own_zone(tmp_path):
    when = datetime(2026, 11, 29, 8, 30, tzinfo=BERLIN_WINTER)
    assert render(tmp_path, '{{ when|datetime("short", "de_DE") }}', when=when) == "29.11.26, 08:30"
    assert render(tmp_path, '{{ when|datetime("HH:mm zzzz", "en_GB") }}', when=when.astimezone(UTC)) == (
        "07:30 Coordinated Universal Time"
    )


def test_the_render_locale_is_the_default_and_an_argument_wins(tmp_path):
    with rendering_locale("de_DE"):
        source = '{{ 1234.5|money("EUR") }} {{ 3|number }} {{ d|date("long") }}'
        assert render(tmp_path, source, d=date(2026, 1, 2)) == "1.234,50\xa0€ 3 2. Januar 2026"
        assert render(tmp_path, '{{ 1234.5|money("EUR", "en_US") }}') == "€1,234.50"


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ('{{ 1|money("EUR", "xx_YY") }}', "unknown locale 'xx_YY'"),
        ("{{ 0.1|number(100000000) }}", "places must be a whole number from 0 to 20"),  # no million-digit string
        ('{{ "yesterday"|date }}', "not a date, datetime or ISO 8601 text"),
        ('{{ "2026-11-29"|date("y" * 1000) }}', "a pattern of at most 64 characters"),
    ],
)
def test_bad_arguments_are_template_errors_not_crashes(tmp_path, source, why):
    with pytest.raises(TemplateError, match=why):
        render(tmp_path, source)


def test_a_job_locale_formats_its_mail_and_a_bad_one_is_a_config_error(tmp_path):
    config = project(tmp_path, "    locale: de_DE\n")
    (tmp_path / "templates" / "statement.j2").write_text(
        '{% block subject %}Rechnung {{ row.id }} vom {{ now|date("long") }}{% endblock %}'
        '{% block text %}Betrag: {{ 1234.5|money("EUR") }}{% endblock %}\n'
    )
    first, _second = build(config)
    assert first["Subject"] == "Rechnung 7 vom 29. November 2026"
    assert first.get_content().strip() == "Betrag: 1.234,50\xa0€"

    config.write_text(config.read_text().replace("locale: de_DE", "locale: klingon"))
    with pytest.raises(ConfigError, match=r"jobs\.statements\.locale: unknown locale 'klingon'"):
        load_config(Settings(config=config), environ={})
