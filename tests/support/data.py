"""The test data that ships in tests/data (sources and licences in tests/data/NOTICE): it is
part of the repository, so a missing file is a failure, never a skip."""

from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
# Real, odd and broken mail, one message a file.
CORPUS = DATA / "corpus"
# design.md's reference config, verbatim: the demo config must equal it.
DESIGN_REFERENCE = DATA / "design_reference_config.yaml"
# A file is a message if it starts like one: an mbox "From " line or a header field name.
_HEADER_LINE = re.compile(rb"^(From |[\x21-\x39\x3b-\x7e]+:)")


def corpus_files() -> list[Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and _HEADER_LINE.match(p.read_bytes()[:200]))
    if not files:
        raise FileNotFoundError(f"no corpus messages under {CORPUS}: see tests/data/NOTICE")
    return files
