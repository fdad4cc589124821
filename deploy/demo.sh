#!/usr/bin/env bash
# The postroom demo: both halves against real local mail servers, with design.md's reference
# config exactly as written (deploy/demo/postroom.yaml).
#
#   bash deploy/demo.sh          set up, run the demo, stop everything it started
#   KEEP=1 bash deploy/demo.sh   leave the mail lab running afterwards (stop: .venv/bin/python -m tests.lab down)
#
# Out: `postroom send orders-report` and `statements` put reports into bob's, carol's and dave's
# mailboxes. In: the daemon runs the four reference rules on mail delivered to alice, bob and
# carol: archive, forward + flag, a signed webhook, an out-of-office reply.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash deploy/setup.sh >/dev/null 2>&1 || bash deploy/setup.sh
py=.venv/bin/python
lab_dir="$root/.lab"
work="$lab_dir/demo"
mkdir -p "$work"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting the mail lab (Dovecot + Postfix on 127.0.0.1, the reference config's ports)"
$py -m tests.lab up --dir "$lab_dir"
set -a
# shellcheck disable=SC1091
source "$lab_dir/lab.env"   # ALICE_PASSWORD … and SSL_CERT_FILE (the lab's CA)
HOOK_SECRET="whsec_$(printf 'postroom demo webhook secret' | base64)"
set +a
export POSTROOM_CONFIG="$root/deploy/demo/postroom.yaml"
export POSTROOM_TEMPLATES="$root/templates"
export POSTROOM_STATE_DIR="$work/state"
export POSTROOM_HTTP="127.0.0.1:9325"
export DEMO_HOOK_LOG="$work/hooks.log"
rm -rf "$work/state" "$DEMO_HOOK_LOG"
$py -m tests.lab clear --dir "$lab_dir" >/dev/null 2>&1 || true
$py deploy/demo/seed.py deploy/demo/shop.db

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -z "${KEEP:-}" ]]; then $py -m tests.lab down --dir "$lab_dir" >/dev/null || true; fi
}
trap cleanup EXIT

PYTHONPATH="$root" $py deploy/demo/demo_http.py &
pids+=($!)
postroom=.venv/bin/postroom

say "postroom check (config, templates, and a login to every server)"
$postroom check

say "postroom jobs"
$postroom jobs

say "postroom send orders-report --dry-run (prints the MIME message, sends nothing)"
# Into a file first: under pipefail, `postroom … | head` fails whenever head closes the pipe
# while postroom is still writing (EPIPE), which depends only on timing.
$postroom send orders-report --dry-run > "$work/dry-run.eml" 2>/dev/null
head -n 40 "$work/dry-run.eml"
echo "[… $(wc -l < "$work/dry-run.eml") lines in all: $work/dry-run.eml]"

say "postroom send orders-report"
$postroom send orders-report

say "postroom send statements (one message per customer row)"
$postroom send statements

say "what arrived (read back over IMAP)"
$py -m tests.lab show --dir "$lab_dir" bob carol dave

say "postroom run: the daemon, watching alice (IMAP), bob (POP3) and carol (IMAPS)"
$postroom run > "$work/daemon.log" 2>&1 &
daemon=$!
pids+=("$daemon")
ready() { $py -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9325/$1', timeout=1).status != 200)" 2>/dev/null; }
for _ in $(seq 100); do ready readyz && break || sleep 0.2; done
ready readyz || { echo "daemon not ready; see $work/daemon.log"; exit 1; }

say "delivering four messages: a [report], a vendor invoice, an X-Alert: critical, a personal note"
PYTHONPATH="$root" $py deploy/demo/deliver.py "$lab_dir"
echo "waiting for the rules to act (bob's POP3 maildrop is polled every 15 s)…"
for _ in $(seq 40); do
  # read the whole listing before matching: `| grep -q` would close the pipe on the first match
  [[ -s "$DEMO_HOOK_LOG" ]] && [[ "$($py -m tests.lab show --dir "$lab_dir" --folder Archive alice)" == *"1 message"* ]] && break
  sleep 0.5
done
sleep 1

say "results"
$py -m tests.lab show --dir "$lab_dir" --folder Archive alice
$py -m tests.lab show --dir "$lab_dir" --flags alice
$py -m tests.lab show --dir "$lab_dir" carol dave
echo "webhooks received (signature checked with HOOK_SECRET):"
cat "$DEMO_HOOK_LOG" 2>/dev/null || echo "  none"

say "metrics (excerpt)"
$py -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9325/metrics').read().decode())" \
  | grep -E '^postroom_(messages_sent_total|actions_total|inbound_messages_total|outbox_depth|dead_letters|webhook_deliveries_total)' || true

say "stopping the daemon (SIGTERM: finishes in-flight work, exits 0)"
kill -TERM "$daemon"
wait "$daemon" && echo "daemon exited 0"
echo "daemon log: $work/daemon.log"
