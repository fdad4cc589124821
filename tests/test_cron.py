"""config/cron.py against APScheduler: the config check must take exactly the `cron:` strings
the daemon's `CronTrigger.from_crontab` takes, no more (a job that passes `check` and fails at
start-up) and no fewer (a config refused that would have run)."""

from __future__ import annotations

import random

import pytest
from apscheduler.triggers.cron import CronTrigger
from postroom.config.cron import cron_problem


def apscheduler_takes(expr: str) -> bool:
    try:
        CronTrigger.from_crontab(expr, timezone="UTC")
    except ValueError:
        return False
    return True


# (expression, whether APScheduler takes it): the expected answer is written down so that a
# change in APScheduler's parsing shows up here too, not only a change in ours.
EDGE_CASES = [
    ("* * * * *", True),
    ("0 8 * * mon-fri", True),
    ("59 23 31 12 6", True),
    ("0 0 1 1 0", True),
    ("60 * * * *", False),
    ("* 24 * * *", False),
    ("* * 0 * *", False),
    ("* * 32 * *", False),
    ("* * * 0 *", False),
    ("* * * 13 *", False),
    ("* * * * 7", False),  # APScheduler 3.x weekdays run 0 (Monday) to 6
    ("30-10 * * * *", False),  # reversed range
    ("*/0 * * * *", False),
    ("0-59/0 * * * *", False),
    ("*/60 * * * *", False),
    ("*/59 * * * *", True),
    ("0-59/15 * * * *", True),
    ("* */24 * * *", False),
    ("* */23 * * *", True),
    ("* * */31 * *", False),  # the day field's span is 30
    ("* * */30 * *", True),
    ("* * * */12 *", False),
    ("* * * * */7", False),
    ("* * * * */6", True),
    ("58/1 * * * *", True),
    ("59/1 * * * *", False),  # from 59 to the top is a span of 0
    ("70/2 * * * *", False),
    ("5-5/1 * * * *", False),
    ("0-0/1 * * * *", True),  # APScheduler reads a range ending at 0 as running to the top
    ("0-0/59 * * * *", True),
    ("0-0/60 * * * *", False),
    ("10-20/10 * * * *", True),
    ("10-20/11 * * * *", False),
    ("007 * * * *", True),
    ("-5 * * * *", False),
    ("* * * * -1", False),
    ("5- * * * *", False),
    ("-5-10 * * * *", False),
    ("1,2,3 * * * *", True),
    ("1, 2 * * * *", False),  # the space makes a sixth field
    ("1,2 , * * *", False),
    ("1,,2 * * * *", False),
    ("1, * * * *", False),
    (",1 * * * *", False),
    ("* * * *", False),
    ("* * * * * *", False),
    ("", False),
    ("   ", False),
    ("\t0\t8 * *\n*\n", True),
    ("0\u30008 * * *", True),  # ideographic space is whitespace to str.split
    ("\u0663 * * * *", True),  # Arabic-Indic 3: \d and int() both take it
    ("\uff15\uff10 * * * *", True),  # full-width 50
    ("* \uff12\uff15 * * *", False),  # full-width 25 hours
    ("\u00b2 * * * *", False),  # superscript two is not a decimal digit
    ("* * * jan *", True),
    ("* * * JAN-Mar *", True),
    ("* * * dec-jan *", False),
    ("* * * jan-mar/2 *", True),  # text after the names is ignored
    ("* * * jan5 *", True),
    ("* * * january *", False),
    ("* * * jan- *", True),
    ("* * * jan-5 *", True),
    ("* * * mon *", False),
    ("* * * * sun", True),
    ("* * * * SUN-sat", False),
    ("* * * * mon-fri/2", True),
    ("* * * * monday", False),
    ("* * * * mon_x", True),
    ("* * * * fri-1", True),
    ("* * * * 1-fri", False),
    ("* * * * jan", False),
    ("* * * * mon,wed,5", True),
    ("* * last * *", True),
    ("* * LAST * *", True),
    ("* * lastly * *", True),  # anchored at the start only
    ("* * la\u017ft * *", True),  # long s folds to s under IGNORECASE
    ("* * last,15 * *", True),
    ("* * las * *", False),
    ("* * 1st * *", False),
    ("* * 1st mon *", False),  # `1st mon` is two fields to from_crontab
    ("0 0 1st mon * *", False),
    ("0 0 5th fri * *", False),
    ("* * last fri *", False),
    ("* last * * *", False),
    ("* * * * last", False),
    ("? * * * *", False),
    ("* * ? * *", False),
    ("* * L * *", False),
    ("* * * * 5#3", False),
    ("*/ * * * *", False),
    ("** * * * *", False),
    ("*/5/2 * * * *", False),
    ("1-2-3 * * * *", False),
    ("1" + "0" * 5000 + " * * * *", False),  # longer than int() reads
    ("0" * 5000 + "1 * * * *", False),
]


@pytest.mark.parametrize(("expr", "takes"), EDGE_CASES)
def test_edge_cases(expr: str, takes: bool) -> None:
    assert apscheduler_takes(expr) is takes, "APScheduler's answer moved"
    assert (cron_problem(expr) is None) is takes, cron_problem(expr)


# Pieces for the random grammar: valid and invalid mixed, weighted towards the boundaries.
_DIGITS = "0123456789"
_ODD_DIGITS = ["\u0663", "\uff15", "\u00b2", "\U0001d7d8"]  # Arabic-Indic 3, full-width 5, ², 𝟘
_WORDS = [
    "jan", "feb", "dec", "JUN", "Sep", "may", "janx", "january", "mon", "fri", "SUN", "tue", "monday",
    "last", "LAST", "lastx", "las", "1st", "5th", "L", "W", "?", "#", "x", "",
]  # fmt: skip


def _number(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.75:
        text = str(rng.choice([0, 1, 2, 5, 6, 7, 11, 12, 13, 23, 24, 30, 31, 32, 58, 59, 60, rng.randrange(100)]))
    elif roll < 0.85:
        text = "0" + str(rng.randrange(40))
    elif roll < 0.95:
        text = "-" + str(rng.randrange(10))
    else:
        text = "".join(rng.choice(_DIGITS + "".join(_ODD_DIGITS)) for _ in range(rng.randint(1, 2)))
    return text


def _name(rng: random.Random) -> str:
    return rng.choice(_WORDS)


def _term(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        start = "*"
    elif kind < 0.35:
        start = _number(rng)
    elif kind < 0.6:
        start = f"{_number(rng)}-{_number(rng)}"
    elif kind < 0.8:
        start = _name(rng)
        if rng.random() < 0.5:
            start += "-" + rng.choice([_name(rng), _number(rng)])
    else:
        start = rng.choice(["*", "**", "*/", "-", "/", "last", _number(rng) + "-"])
    if rng.random() < 0.3:
        start += "/" + rng.choice([_number(rng), str(rng.randint(1, 8)), "", "0"])
    return start


def _field(rng: random.Random) -> str:
    terms = [_term(rng) for _ in range(rng.choices([1, 2, 3], weights=[6, 2, 1])[0])]
    separator = rng.choices([",", ", ", ",,", " ,"], weights=[20, 1, 1, 1])[0]
    return separator.join(terms)


def _expression(rng: random.Random) -> str:
    count = rng.choices([5, 4, 6], weights=[30, 1, 1])[0]
    # Mostly `*`, so that one random field decides, and an accepted line is not rare.
    fields = [_field(rng) if rng.random() < 0.25 else "*" for _ in range(count)]
    gaps = [rng.choices([" ", "  ", "\t", "\u3000", "\xa0"], weights=[20, 2, 1, 1, 1])[0] for _ in fields]
    return "".join(gap + field for gap, field in zip(gaps, fields, strict=True)).lstrip(" ")


def test_agrees_with_apscheduler_on_random_expressions() -> None:
    rng = random.Random(20261129)
    disagreements: list[tuple[str, bool, str | None]] = []
    accepted = 0
    total = 20000
    for _ in range(total):
        expr = _expression(rng)
        takes = apscheduler_takes(expr)
        problem = cron_problem(expr)
        accepted += takes
        if takes is not (problem is None):
            disagreements.append((expr, takes, problem))
    assert not disagreements[:20], f"{len(disagreements)} disagreements"
    # The grammar must exercise both answers, or agreement says little.
    assert total * 0.2 < accepted < total * 0.8, accepted
