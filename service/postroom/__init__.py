"""postroom: scheduled template mail out, inbox rules in.

The package in layers, top down. A module imports from its own layer and the layers below,
never from one above; no two files import each other, directly or round a loop, and no two
packages either. Imports inside functions and under ``TYPE_CHECKING`` count too: a lazy import
hides an arrow from Python, not from a reader. tests/test_layers.py holds the code to this table.

8. ``cli/``: the `postroom` commands, a module per command group. Nothing imports it.
7. ``app.py`` (the daemon: composition, signals, reload), ``rules_commands.py`` (the bodies
   of `rules test` and `rules try`).
6. ``bootstrap.py``: how a process starts (config checked, store opened, logins built).
5. ``console/`` (the web pages; it sees the daemon only as ``console.source.DaemonView``,
   which app.py implements), ``checks.py`` (`postroom check`), ``sieve/`` (Sieve scripts as
   rules), ``rules_report.py``.
4. ``outgoing/`` (jobs, SMTP, the outbox sender, `send`'s own sender: ``send_now``) and
   ``incoming/`` (connections, watchers, rules, actions): the two halves, side by side;
   neither imports the other.
3. ``schedule/`` (when jobs fire; jobs are called back, not imported), ``webhooks/``
   (signing, the delivery queue the incoming executor feeds), ``auth/`` (OAuth2 tokens and
   sign-in; the edges that log in with it sit above it, so a sign-in is handed its proving
   login), ``deploy.py``.
2. ``config/`` (settings, the YAML model, rules), ``fire_lease.py``.
1. ``store/`` (every side effect, written before it happens), ``mail/`` (the one MIME writer
   and parser, templates), ``http.py``, ``clock_check.py``, ``notify.py``, ``supervise.py``,
   ``credentials.py``, ``starter/``.
0. The ground, importing nothing of postroom's but each other: ``errors.py`` (the one root
   error), ``clock.py``, ``retry.py``, ``timing.py``, ``logs.py``, ``redact.py``,
   ``metrics.py``, ``listening.py``, ``action_kinds.py``.

One import still points up, tying config/ to sieve/ and sieve/ through incoming/ back to
config/, to be taken out: ``config/loader.py`` -> ``sieve/syntax.py`` (the loader reads each
account's Sieve script to report its errors with the config's).
"""

__version__ = "0.1.0"
