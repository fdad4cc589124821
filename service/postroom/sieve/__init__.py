"""Sieve scripts (RFC 5228) as a rule language: ``sieve: FILE`` on an account.

- ``syntax``: the script read through sievelib into typed nodes, bounded and checked (what
  sievelib lacks is listed there);
- ``match``: comparators and match types;
- ``interpret``: the pure interpreter (message, envelope and ``now`` in; Sieve actions and a
  trace out);
- ``plan``: those actions as the executor's typed ``PlannedAction``s (no second executor);
- ``rule``: a script as an entry of the ``RuleSet``, after the YAML rules.
"""
