"""The mail layer both halves share: composing MIME messages (``compose``), rendering Jinja
templates (``templates``) and HTML to plain text (``text``). It imports neither
``postroom.outgoing`` nor ``postroom.incoming``; both import it."""
