"""The store's tables (SQLAlchemy Core). Alembic migrations create them; this file is the
reference the queries are written against. Keep both in step: a test compares them.

Each table holds one kind of unit of work with its idempotency key:
- outbox:       an outgoing message; key `dedup_key` (job fire + row, or action key), Message-ID
- fire_claims:  a scheduled fire; key (job_id, fire_time) — one replica wins it
- job_runs:     what each run did (also manual `postroom send`), for `postroom jobs` and metrics
- checkpoints:  per (account, folder): UIDVALIDITY and the highest UID taken in
- inbound:      an inbound message; key "account/folder/uidvalidity/uid" or "account/pop3/uidl"
- actions:      the action ledger; key (message_key, rule, action_index)
- replies:      when an auto-reply last went to a sender (once per `days`)
- webhooks:     a webhook delivery; key `webhook_id`, stable across retries
- watch_leases: which replica watches a folder (or maildrop), until its lease runs out
- replicas:     the replicas alive now (heartbeat rows), to share folders out evenly
- oauth2_tokens: per OAuth2 account: its refresh token (encrypted) and refresh state
- bounces:      the bounce ledger; key (report_key, recipient): a bounce report read once
- suppressions: per (account, address): a hard bounce; jobs send that account nothing there
- verp_keys:    the secret VERP return paths are signed with
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

TS = DateTime(timezone=True)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedup_key", String(512), nullable=False, unique=True),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("account", String(255), nullable=False),
    Column("envelope_from", String(255), nullable=False),  # "" means the null sender <>
    Column("recipients", JSON, nullable=False),  # still to deliver to
    Column("raw", LargeBinary, nullable=False),
    # queued → sending → sent | dead; sending with an expired lease is taken again;
    # held: not tried, its account waits for an OAuth2 sign-in (due again like queued).
    # sent → bounced when a bounce report for it comes back (details in `bounces`).
    Column("status", String(16), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TS, nullable=False),
    Column("lease_owner", String(255)),
    Column("lease_until", TS),
    Column("last_error", Text),
    Column("delivered", JSON, nullable=False, default=list),  # recipients the server accepted
    Column("refused", JSON, nullable=False, default=dict),  # recipient → server reply
    Column("origin", String(255), nullable=False, default=""),  # job name or rule name
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("sent_at", TS),
    Column("run_id", Integer),  # the job run that made it (job_runs.id); None: a rule's
)
Index("ix_outbox_due", outbox.c.status, outbox.c.next_attempt_at)
Index("ix_outbox_run", outbox.c.run_id)

fire_claims = Table(
    "fire_claims",
    metadata,
    Column("job_id", String(255), primary_key=True),
    Column("fire_time", TS, primary_key=True),  # UTC
    Column("claimed_by", String(255), nullable=False),
    Column("claimed_at", TS, nullable=False),
    # running → done | failed | skipped (missed beyond grace, or skip_if_empty)
    Column("status", String(16), nullable=False),
    Column("finished_at", TS),
    Column("detail", Text),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(255), nullable=False),
    Column("fire_time", TS),  # None for a manual run
    Column("trigger", String(16), nullable=False),  # schedule | catch-up | manual
    Column("started_at", TS, nullable=False),
    Column("finished_at", TS),
    Column("status", String(16), nullable=False),  # running | done | failed | skipped
    Column("messages", Integer, nullable=False, default=0),
    Column("error", Text),
)
Index("ix_job_runs_job", job_runs.c.job_id, job_runs.c.started_at)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("account", String(255), primary_key=True),
    Column("folder", String(1024), primary_key=True),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("last_uid", BigInteger, nullable=False),
    Column("start_from", String(16), nullable=False),  # what the first start applied
    Column("updated_at", TS, nullable=False),
)

inbound = Table(
    "inbound",
    metadata,
    Column("key", String(1024), primary_key=True),
    Column("account", String(255), nullable=False),
    Column("folder", String(1024), nullable=False),
    Column("uidvalidity", BigInteger),
    Column("uid", BigInteger),
    Column("uidl", String(255)),
    Column("message_id", String(998)),
    # pending → done | failed (retried later) | set_aside (gave up, listed)
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
)
Index("ix_inbound_msgid", inbound.c.account, inbound.c.folder, inbound.c.message_id)
Index("ix_inbound_status", inbound.c.status)

actions = Table(
    "actions",
    metadata,
    Column("message_key", String(1024), primary_key=True),
    Column("rule", String(255), primary_key=True),
    Column("action_index", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),
    # planned → done | failed (retry) | dead
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("detail", JSON),
    Column("error", Text),
    Column("updated_at", TS, nullable=False),
)

replies = Table(
    "replies",
    metadata,
    Column("account", String(255), primary_key=True),
    Column("rule", String(255), primary_key=True),
    Column("sender", String(512), primary_key=True),
    Column("last_sent_at", TS, nullable=False),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("webhook_id", String(255), primary_key=True),
    Column("action_key", String(1300), nullable=False),
    Column("rule", String(255), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # queued | sending | done | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TS, nullable=False),
    Column("lease_owner", String(255)),
    Column("lease_until", TS),
    Column("last_error", Text),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
)
Index("ix_webhooks_due", webhooks.c.status, webhooks.c.next_attempt_at)

# Which replica watches a mailbox folder: one row per watch, held while renewed.
watch_leases = Table(
    "watch_leases",
    metadata,
    Column("watch", String(1300), primary_key=True),  # "account/folder", or "account/pop3"
    Column("owner", String(255), nullable=False),  # POSTROOM_INSTANCE of the holder
    Column("expires_at", TS, nullable=False),
)

# Replicas alive now: each renews its row while it runs (heartbeat), so the others can count
# themselves and share the folders out evenly. A row past expires_at is a replica that died.
replicas = Table(
    "replicas",
    metadata,
    Column("instance", String(255), primary_key=True),  # POSTROOM_INSTANCE
    Column("started_at", TS, nullable=False),
    Column("seen_at", TS, nullable=False),  # its last heartbeat (the database's clock)
    Column("expires_at", TS, nullable=False),
    Column("clock_offset_ms", BigInteger),  # the database's clock minus the replica's (clock_check)
)

# One row per OAuth2 account, shared by every replica. The refresh token is sealed by
# auth/vault.py before it gets here: the store never holds it in the clear.
oauth2_tokens = Table(
    "oauth2_tokens",
    metadata,
    Column("account", String(255), primary_key=True),
    Column("sealed_refresh_token", LargeBinary),  # Fernet; None: not signed in (or forgotten)
    # Where that refresh token descends from: "login", or "config:" + a digest of the token
    # the config gave (a new one in the config then wins over the stored rotations of the old).
    Column("origin", String(80), nullable=False),
    Column("expires_at", TS),  # of the access token last obtained (status, metrics)
    Column("refreshed_at", TS),
    Column("last_error", Text),
    Column("updated_at", TS, nullable=False),
)

# One row per recipient of each bounce report consumed. report_key names the report
# ("account/" + its Message-ID, or its inbound key), so a report seen twice (a retry, a
# UIDVALIDITY change, a copy in two folders) is recorded once.
bounces = Table(
    "bounces",
    metadata,
    Column("report_key", String(1300), primary_key=True),
    Column("recipient", String(512), primary_key=True),
    Column("account", String(255), nullable=False),
    Column("outbox_id", Integer),  # the message that bounced (None: not one of ours)
    Column("action", String(16), nullable=False),  # failed | delayed | …, as the report says
    Column("status", String(16), nullable=False),  # "5.1.1"; "" when the report gives none
    Column("diagnostic", Text),
    Column("hard", Boolean, nullable=False),  # 5.x.x failed: the address was suppressed
    Column("created_at", TS, nullable=False),
)
Index("ix_bounces_outbox", bounces.c.outbox_id)

# Addresses an account's jobs no longer send to (a hard bounce), until `suppressions remove`.
suppressions = Table(
    "suppressions",
    metadata,
    Column("account", String(255), primary_key=True),
    Column("address", String(512), primary_key=True),  # lower-cased
    Column("status", String(16), nullable=False),
    Column("diagnostic", Text),
    Column("outbox_id", Integer),  # the message whose bounce put it here
    Column("created_at", TS, nullable=False),
    # What put it here, shown by `postroom suppressions`: the bounce report's key (its ledger
    # rows), and a line of evidence (the report's date, sender and status; or an SMTP refusal).
    Column("report_key", String(1300)),
    Column("evidence", Text),
)

# The key VERP return paths are signed with (postroom.mail.verp), made once per store; a
# POSTROOM_VERP_KEY setting is used instead when given (and not stored).
verp_keys = Table(
    "verp_keys",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False),
)

__all__ = [
    "actions",
    "bounces",
    "checkpoints",
    "fire_claims",
    "inbound",
    "job_runs",
    "metadata",
    "oauth2_tokens",
    "outbox",
    "replicas",
    "replies",
    "suppressions",
    "verp_keys",
    "watch_leases",
    "webhooks",
]
