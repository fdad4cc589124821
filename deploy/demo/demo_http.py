"""The demo's HTTP side on 127.0.0.1:9400: serves /rates.json and receives signed webhooks.

Every webhook is checked against HOOK_SECRET (Standard Webhooks) and appended, with the
verdict, to the file named by DEMO_HOOK_LOG.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RATES = {"EUR": 1.0, "USD": 1.08, "GBP": 0.86, "CHF": 0.94}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/rates.json":
            self.send_error(404)
            return
        body = json.dumps(RATES).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        from postroom.errors import WebhookVerifyError
        from postroom.webhooks.signing import verify

        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            verify(os.environ["HOOK_SECRET"], dict(self.headers.items()), body)
            ok = True
        except WebhookVerifyError:
            ok = False
        with open(os.environ.get("DEMO_HOOK_LOG", "hooks.log"), "a", encoding="utf-8") as out:
            out.write(
                json.dumps(
                    {
                        "webhook_id": self.headers.get("webhook-id"),
                        "signature_ok": ok,
                        "payload": json.loads(body or b"{}"),
                    }
                )
                + "\n"
            )
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *_args: object) -> None:  # keep the demo's output readable
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 9400), Handler).serve_forever()
