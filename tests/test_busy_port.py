"""`postroom run` when its HTTP port is taken: exit 75 (EX_TEMPFAIL, which systemd's
RestartPreventExitStatus=78 does not stop) naming the process that holds the port."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.support.daemon import ROOT
from tests.test_store_named import postroom


def test_a_taken_http_port_exits_75_and_names_who_holds_it(tmp_path: Path) -> None:
    (tmp_path / "postroom.yaml").write_text(
        "accounts:\n  me: {address: me@example.org, smtp: {host: 127.0.0.1, port: 1, security: none}}\n"
    )
    (tmp_path / "templates").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")} | {
            "POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"),
            "POSTROOM_STATE_DIR": str(tmp_path / "state"),
            "POSTROOM_HTTP": f"127.0.0.1:{port}",
            "PYTHONPATH": str(ROOT),
        }
        done = postroom(env, "run")
    assert done.returncode == 75, done.stdout + done.stderr
    assert f"127.0.0.1:{port} is in use by pid {os.getpid()} " in done.stderr
    assert "POSTROOM_HTTP" in done.stderr
