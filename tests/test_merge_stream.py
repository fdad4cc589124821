"""A streamed build (what `send --dry-run` prints from): a merge rendered a chunk of rows at a
time, the same messages in the same order as the whole build, only a chunk held at once."""

from __future__ import annotations

import asyncio
import email
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from postroom.config import Settings, load_config
from postroom.errors import MessageRefused
from postroom.mail.templates import TemplateRenderer
from postroom.outgoing.jobs import BuiltChunk, JobRunner

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)

CONFIG = """\
accounts:
  shop: {address: billing@shop.example, smtp: {host: 127.0.0.1, port: 25, security: none}}
jobs:
  statements:
    schedule: {cron: "0 6 1 * *"}
    account: shop
    template: statement
    to: ["{{ row.email }}"]
    data: {customers: {file: customers.json}}
    for_each: customers
    skip_if_empty: customers
"""


def runner(tmp_path: Path, rows: int) -> JobRunner:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "statement.j2").write_text(
        "{% block subject %}Row {{ row.n }}{% endblock %}{% block html %}<p>Hi {{ row.n }}</p>{% endblock %}\n"
    )
    customers = [{"email": f"c{n}@example.test", "n": n} for n in range(rows)]
    (tmp_path / "customers.json").write_text(json.dumps(customers))
    (tmp_path / "postroom.yaml").write_text(CONFIG)
    loaded = load_config(Settings(config=tmp_path / "postroom.yaml"), environ={})
    return JobRunner(loaded.config, TemplateRenderer(loaded.templates_dir), None)


async def streamed(run: JobRunner, chunk_rows: int) -> tuple[str | None, list[BuiltChunk]]:
    skipped, chunks = await run.build_chunks("statements", key_prefix="k", now=NOW, chunk_rows=chunk_rows)
    return skipped, [chunk async for chunk in chunks]


def test_a_merge_streams_in_chunks_with_the_whole_builds_messages(tmp_path: Path) -> None:
    run = runner(tmp_path, 7)
    skipped, chunks = asyncio.run(streamed(run, 3))
    assert skipped is None
    assert [(c.first, c.total, len(c.messages)) for c in chunks] == [(0, 7, 3), (3, 7, 3), (6, 7, 1)]
    messages = [m for c in chunks for m in c.messages]
    whole = asyncio.run(run.build("statements", key_prefix="k", now=NOW)).messages
    assert [m.dedup_key for m in messages] == [m.dedup_key for m in whole] == [f"k:{n}" for n in range(7)]
    assert [m.recipients for m in messages] == [m.recipients for m in whole]
    assert [email.message_from_bytes(m.raw)["Subject"] for m in messages] == [f"Row {n}" for n in range(7)]


def test_an_empty_merge_is_skipped_and_makes_no_chunks(tmp_path: Path) -> None:
    skipped, chunks = asyncio.run(streamed(runner(tmp_path, 0), 3))
    assert skipped == "customers has no rows"
    assert chunks == []


def test_a_row_that_cannot_render_stops_the_stream_at_its_chunk(tmp_path: Path) -> None:
    run = runner(tmp_path, 5)
    customers = json.loads((tmp_path / "customers.json").read_text())
    customers[3]["email"] = "two@example.test, addresses@example.test"
    (tmp_path / "customers.json").write_text(json.dumps(customers))

    async def consume() -> list[int]:
        _, chunks = await run.build_chunks("statements", key_prefix="k", now=NOW, chunk_rows=2)
        got: list[int] = []
        with pytest.raises(MessageRefused, match="row 3"):
            async for chunk in chunks:
                got.append(len(chunk.messages))
        return got

    assert asyncio.run(consume()) == [2]
