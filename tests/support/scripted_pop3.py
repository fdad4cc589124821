"""A real-socket POP3 server for the faults the lab's Dovecot can't be made to produce: a
maildrop another session holds ([IN-USE]), a server short of something ([SYS/TEMP]), a
connection dropped at PASS, a server that drips (``Drip``). The scripted IMAP server's
machinery with POP3's untagged lines: each command line goes to ``answer(command)``, which
returns the bytes to send back, or None to close at once; the lines received are kept in
``lines``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tests.support.scripted_imap import Reply, ScriptedImap, scripted_imap

Answer = Callable[[bytes], "Reply | None"]


@contextlib.contextmanager
def scripted_pop3(answer: Answer, greeting: Reply = b"+OK scripted\r\n") -> Iterator[ScriptedImap]:
    # scripted_imap splits "USER u" into tag b"USER" and command b"u": join them again
    with scripted_imap(lambda verb, rest: answer(b" ".join(p for p in (verb, rest) if p)), greeting) as server:
        yield server
