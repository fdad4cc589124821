"""Rule schema, evaluation and the IMAP SEARCH prefilter: pure, with ``now`` passed in."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import yaml
from postroom.action_kinds import ACTION_KINDS
from postroom.config.rules import ACTION_MODELS, RuleConfig
from postroom.incoming.message import Attachment, ParsedMessage
from postroom.incoming.rules import BASE_HEADER_FIELDS, compile_rules, search_criteria
from pydantic import ValidationError

from tests.support.data import DESIGN_REFERENCE

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def rule(match: dict | None = None, actions: list | None = None, **fields) -> RuleConfig:
    data = {
        "name": fields.pop("name", "r"),
        "account": fields.pop("account", "alice"),
        "actions": actions or [{"mark_read": True}],
        **fields,
    }
    if match is not None:
        data["match"] = match
    return RuleConfig.model_validate(data)


def message(headers: str = "", body: str = "hello\n", **kwargs) -> ParsedMessage:
    raw = (headers.strip("\n").replace("\n", "\r\n") + "\r\n\r\n" + body).encode()
    return ParsedMessage.from_bytes(raw, key="alice/INBOX/1/1", **kwargs)


def matches(match: dict, msg: ParsedMessage, now: datetime = NOW) -> bool:
    return bool(compile_rules([rule(match)]).evaluate(msg, now=now))


def reference_rules() -> list[dict]:
    return yaml.safe_load(DESIGN_REFERENCE.read_text().replace("${HOOK_SECRET}", "whsec_dGVzdA=="))["rules"]


# -- schema --------------------------------------------------------------------------------


def test_reference_rules_parse_as_written():
    rules = [RuleConfig.model_validate(r) for r in reference_rules()]
    assert [r.name for r in rules] == ["archive-reports", "invoices", "alerts", "out-of-office"]
    assert rules[0].actions[0].kind == "move" and rules[0].actions[0].params() == {"folder": "Archive"}
    assert rules[1].match.from_.matches == "*@vendor.test" and rules[1].match.has_attachment is True
    assert [a.kind for a in rules[1].actions] == ["forward", "flag"]
    assert rules[1].actions[0].params() == {"to": ["carol@example.test"], "as": "attachment"}
    assert rules[2].match.header.name == "X-Alert"
    assert rules[2].actions[0].params()["signed"] is True
    assert "secret" not in str(rules[2].actions[0].params())
    assert rules[3].actions[0].params() == {"template": "out_of_office", "days": 7}
    assert rules[3].watched_folders() == ("INBOX",)


def test_pop3_problems_name_imap_only_actions():
    alerts, invoices = (RuleConfig.model_validate(r) for r in reference_rules()[2:0:-1])
    assert not alerts.needs_imap_only_actions() and alerts.pop3_problems() == []
    assert invoices.needs_imap_only_actions()
    assert invoices.pop3_problems() == [
        (("actions", 1, "flag"), "flag needs IMAP; a POP3 account can only read its mail")
    ]
    assert rule(folders=["INBOX", "Lists"]).pop3_problems()[-1][0] == ("folders",)
    assert rule(folder="Archive").pop3_problems()[-1][0] == ("folder",)
    assert rule(folder="inbox", actions=[{"stop": True}]).pop3_problems() == []


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"match": {"header": {"name": "X-A", "regex": "(unclosed"}}}, "match.header.regex"),
        ({"match": {"any": [{"subject": {"regex": "[z-a]"}}]}}, "match.any.0.subject.regex"),
        ({"match": {"subjct": "x"}}, "match.subjct"),
        ({"match": {"subject": {"containz": "x"}}}, "match.subject.containz"),
        ({"match": {"size": {"over": "10q"}}}, "match.size.over"),
        ({"match": {"older_than": "7 fortnights"}}, "match.older_than"),
        ({"actions": [{"move": "A", "copy": "B"}]}, "actions.0"),
        ({"actions": [{"mvoe": "A"}]}, "actions.0.mvoe"),
        ({"actions": [{"flag": "\\Recent"}]}, "actions.0.flag"),
        ({"actions": [{"reply": {"template": "t", "days": 0}}]}, "actions.0.reply.days"),
        ({"actions": [{"webhook": {"url": "ftp://x/"}}]}, "actions.0.webhook.url"),
        ({"actions": [{"webhook": {"url": "http://x/", "secret": "whsec_!!"}}]}, "actions.0.webhook.secret"),
        ({"actions": [{"webhook": {"url": "http://x/", "secret": "plain-words"}}]}, "actions.0.webhook.secret"),
        ({"actions": [{"mark_read": False}]}, "actions.0.mark_read"),
        ({"actions": []}, "actions"),
        ({"folder": "A", "folders": ["B"]}, ""),
    ],
)
def test_config_errors_name_the_key(data, where):
    base = {"name": "r", "account": "alice", "actions": [{"stop": True}]}
    with pytest.raises(ValidationError) as info:
        RuleConfig.model_validate({**base, **data})
    # as the loader shows them: without pydantic's union plumbing
    locations = [
        ".".join(str(p) for p in e["loc"] if not str(p).startswith("tagged-union")) for e in info.value.errors()
    ]
    assert where in locations


def test_every_action_kind_has_a_schema_and_only_those():
    # copy_to / move_to are written as copy / move with {account: …}
    assert set(ACTION_MODELS) == {kind.key for kind in ACTION_KINDS.values()}


def test_sizes_durations_and_shorthands():
    r = rule(
        {"size": {"over": "10k", "under": "2M"}, "older_than": "12h", "subject": "plain"},
        actions=[{"flag": ["$Work", "\\Seen"]}, {"forward": {"to": "x@y.test"}}],
    )
    assert (r.match.size.over, r.match.size.under) == (10240, 2 * 1024 * 1024)
    assert r.match.older_than == timedelta(hours=12)
    assert r.match.subject.contains == "plain"
    assert r.actions[0].params() == {"flags": ["$Work", "\\Seen"]}
    assert r.actions[1].params()["to"] == ["x@y.test"]
    assert rule(match=None).match == rule({}).match


# -- operators -----------------------------------------------------------------------------

SAMPLE = message(
    """
From: "Vendor Billing" <Billing@Vendor.test>
To: alice@example.test, Bob <bob@example.test>
Cc: =?utf-8?q?Ren=C3=A9e?= <renee@example.test>
Subject: [report] Daily =?utf-8?q?r=C3=A9sum=C3=A9?=
X-Alert: critical
Date: Mon, 09 Mar 2026 12:00:00 +0000
""",
    body="The total is 42 EUR.\n",
)


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"subject": {"contains": "[REPORT]"}}, True),
        ({"subject": {"contains": "résumé"}}, True),
        ({"subject": {"contains": "weekly"}}, False),
        ({"subject": {"is": "[report] daily RÉSUMÉ"}}, True),
        ({"subject": {"is": "[report]"}}, False),
        ({"subject": {"matches": "[[]report]*"}}, True),
        ({"subject": {"matches": "daily*"}}, False),
        ({"subject": {"regex": r"^\[report\] Daily"}}, True),
        ({"subject": {"regex": r"^\[REPORT\]"}}, False),
        ({"subject": {"regex": r"(?i)^\[REPORT\]"}}, True),
        ({"subject": {"contains": "report", "regex": "Weekly"}}, False),
        ({"body": {"contains": "42 eur"}}, True),
        ({"body": "43"}, False),
        ({"header": {"name": "x-alert", "regex": "^(high|critical)$"}}, True),
        ({"header": {"name": "X-Alert", "is": "high"}}, False),
        ({"header": {"name": "X-Missing", "contains": ""}}, False),
        ({"not": {"header": {"name": "X-Missing", "contains": ""}}}, True),
    ],
)
def test_string_operators(match, expected):
    assert matches(match, SAMPLE) is expected


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"from": {"matches": "*@vendor.test"}}, True),
        ({"from": {"is": "billing@vendor.test"}}, True),
        ({"from": {"is": "vendor billing"}}, True),
        ({"from": {"is": "Vendor Billing <billing@vendor.test>"}}, True),
        ({"from": {"contains": "example"}}, False),
        ({"to": {"is": "bob@example.test"}}, True),
        ({"to": {"matches": "bob"}}, True),
        ({"to": {"is": "carol@example.test"}}, False),
        ({"cc": {"contains": "renée"}}, True),
        ({"cc": {"regex": "^renee@"}}, True),
    ],
)
def test_address_matching(match, expected):
    assert matches(match, SAMPLE) is expected


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({}, True),
        ({"subject": "report", "from": "vendor"}, True),
        ({"subject": "report", "from": "nobody"}, False),
        ({"all": [{"subject": "report"}, {"to": "bob"}]}, True),
        ({"all": [{"subject": "report"}, {"to": "zed"}]}, False),
        ({"any": [{"subject": "zzz"}, {"to": "bob"}]}, True),
        ({"any": [{"subject": "zzz"}, {"to": "zed"}]}, False),
        ({"not": {"subject": "report"}}, False),
        ({"not": {"any": [{"subject": "zzz"}, {"not": {"to": "bob"}}]}}, True),
    ],
)
def test_combinators(match, expected):
    assert matches(match, SAMPLE) is expected


def test_size_and_age_use_now_passed_in():
    msg = message("Subject: x", internal_date=NOW - timedelta(days=8))
    assert matches({"size": {"under": "1k"}}, msg) and not matches({"size": {"over": 100}}, msg)
    assert matches({"size": {"over": 10}}, msg)
    assert matches({"older_than": "7d"}, msg)
    assert not matches({"older_than": "7d"}, msg, now=NOW - timedelta(days=2))
    # no internal date: the Date header counts; no date at all: never old
    dated = message("Date: Mon, 02 Mar 2026 12:00:00 +0000")
    assert matches({"older_than": "7d"}, dated) and not matches({"older_than": "9d"}, dated)
    assert not matches({"older_than": "1m"}, message("Subject: undated"))


def test_attachments_from_mime_tree_and_from_bodystructure():
    raw = (
        b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b'--XX\r\nContent-Type: application/pdf; name="inv.pdf"\r\n'
        b'Content-Disposition: attachment; filename="Invoice-7.PDF"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n"
    )
    full = ParsedMessage.from_bytes(raw, key="k")
    assert full.attachments() == [Attachment("Invoice-7.PDF", "application/pdf", 9)]
    assert full.body_text().strip() == "see attached"
    assert matches({"has_attachment": True}, full)
    assert matches({"attachment": {"filename": {"matches": "*.pdf"}}}, full)
    assert matches({"attachment": {"content_type": {"is": "application/pdf"}, "filename": "invoice"}}, full)
    assert not matches({"attachment": {"content_type": {"matches": "image/*"}}}, full)
    heads = ParsedMessage.from_headers(
        raw.split(b"\r\n\r\n")[0], key="k", size=len(raw), attachments=[("a.png", "image/png", 10)]
    )
    assert matches({"attachment": {"content_type": {"matches": "image/*"}}}, heads)
    assert not matches({"has_attachment": True}, ParsedMessage.from_headers(b"From: a@b.test\r\n", key="k", size=5))


def test_evaluate_orders_actions_and_honours_stop():
    rules = compile_rules(
        [
            rule({"subject": "report"}, [{"move": "Archive"}, {"stop": True}, {"flag": "\\Flagged"}], name="first"),
            rule({}, [{"mark_read": True}], name="second"),
        ]
    )
    planned = rules.evaluate(SAMPLE, now=NOW)
    assert [(a.rule, a.index, a.kind) for a in planned] == [("first", 0, "move"), ("first", 2, "flag")]
    assert planned[0].key("k") == "k|first|0"
    other = rules.evaluate(message("Subject: hello"), now=NOW)
    assert [(a.rule, a.kind) for a in other] == [("second", "mark_read")]
    explained = rules.explain(SAMPLE, now=NOW)
    assert [(e.rule, e.matched, e.skipped, len(e.actions)) for e in explained] == [
        ("first", True, False, 2),
        ("second", True, True, 0),
    ]


def test_for_folder_and_watch_targets():
    rules = compile_rules(
        [rule({}, name="a"), rule({}, name="b", folders=["Lists", "INBOX"]), rule({}, name="c", account="bob")]
    )
    assert [r.name for r in rules.for_folder("alice", "inbox")] == ["a", "b"]
    assert [r.name for r in rules.for_folder("alice", "Lists")] == ["b"]
    assert [r.name for r in rules.for_folder("alice", "lists")] == []
    assert rules.watch_targets() == [("alice", "INBOX"), ("alice", "Lists"), ("bob", "INBOX")]


def test_fetch_needs():
    plain = compile_rules([rule({"subject": "x"})]).needs()
    assert plain.header_fields == frozenset(BASE_HEADER_FIELDS)
    assert not (plain.body or plain.bodystructure or plain.size or plain.internal_date)
    needs = compile_rules(
        [
            rule({"not": {"header": {"name": "X-Alert", "is": "low"}}}),
            rule({"any": [{"has_attachment": True}, {"size": {"over": 1}}], "header": {"name": "from", "is": "x"}}),
            rule({"all": [{"body": "x"}, {"older_than": "1d"}]}),
        ]
    ).needs()
    assert needs.header_fields == frozenset(BASE_HEADER_FIELDS) | {"X-Alert"}
    assert needs.body and needs.bodystructure and needs.size and needs.internal_date


# -- search criteria -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"subject": {"contains": "[report]"}}, ["SUBJECT", "[report]"]),
        (
            {"subject": {"is": "Hello"}, "from": {"matches": "*@vendor.test"}},
            ["FROM", "@vendor.test", "SUBJECT", "Hello"],
        ),
        ({"header": {"name": "X-Alert", "regex": "^high$"}}, ["HEADER", "X-Alert", ""]),
        ({"header": {"name": "X-Alert", "contains": "high"}}, ["HEADER", "X-Alert", "high"]),
        ({"size": {"over": "1k", "under": 5000}}, ["LARGER", 1024, "SMALLER", 5000]),
        ({"older_than": "7d"}, ["BEFORE", date(2026, 3, 5)]),
        (
            {"any": [{"subject": "a"}, {"to": "b"}, {"cc": "c"}]},
            ["OR", ["SUBJECT", "a"], ["OR", ["TO", "b"], ["CC", "c"]]],
        ),
        ({"not": {"subject": "spam", "size": {"over": 10}}}, ["NOT", ["SUBJECT", "spam", "LARGER", 10]]),
        ({"all": [{"subject": "a"}, {"has_attachment": True}]}, ["SUBJECT", "a"]),
        ({"body": {"contains": "invoice"}}, ["BODY", "invoice"]),
        ({}, None),
        ({"subject": {"regex": "x"}}, None),
        ({"subject": "café"}, None),
        ({"body": {"contains": "a & b"}}, None),
        ({"any": [{"subject": "a"}, {"has_attachment": True}]}, None),
        ({"not": {"subject": {"is": "a"}}}, None),
        ({"not": {"older_than": "1d"}}, None),
    ],
)
def test_search_criteria(match, expected):
    assert search_criteria(rule(match), now=NOW) == expected


def test_ruleset_search_criteria_ors_rules_or_gives_up():
    both = compile_rules([rule({"subject": "a"}), rule({"size": {"over": 5}})])
    assert both.search_criteria(now=NOW) == ["OR", ["SUBJECT", "a"], ["LARGER", 5]]
    assert compile_rules([rule({"subject": "a"}), rule({})]).search_criteria(now=NOW) is None


def test_search_prefilter_never_excludes_a_match():
    """Every message the rule matches also satisfies the criteria as a naive server would."""
    msg = message("From: Bob <bob@vendor.test>\nSubject: Re: [Report] Q1", internal_date=NOW - timedelta(days=9))
    for match in (
        {"from": {"matches": "*@VENDOR.test"}},
        {"subject": {"is": "re: [report] q1"}},
        {"older_than": "8d"},
        {"any": [{"subject": "zz"}, {"subject": {"matches": "*report*"}}]},
    ):
        assert matches(match, msg)
        criteria = search_criteria(rule(match), now=NOW)
        assert criteria is not None and _naive_server(criteria, msg)


def _naive_server(criteria: list, msg: ParsedMessage) -> bool:
    """A tiny SEARCH evaluator for the keys the translator emits (enough for the test above)."""
    tokens = list(criteria)

    def one() -> bool:
        token = tokens.pop(0)
        if isinstance(token, list):
            return _naive_server(token, msg)
        if token == "OR":
            a, b = one(), one()
            return a or b
        if token == "NOT":
            return not one()
        if token == "BEFORE":
            return msg.internal_date.date() < tokens.pop(0)
        raw = {"FROM": ", ".join(a.display for a in msg.from_), "SUBJECT": msg.subject}[token]
        return tokens.pop(0).lower() in raw.lower()

    result = True
    while tokens:
        result = one() and result
    return result
