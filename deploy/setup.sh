#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine for postroom's development and CI, run as root:
# the mail servers the test lab starts (never as system services), then .venv with the project
# and its test and lint tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# chromium + chromium-driver: the console's browser tests (selenium drives them headless).
# dovecot-sieve: Pigeonhole's sieve-test, the reference for the Sieve differential test.
# prometheus: promtool, which checks and unit-tests the alert rules. faketime: replicas whose
# clock is wrong (libfaketime), for the schedule tests.
packages=(dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix openssl imapfilter swaks python3-venv
  chromium chromium-driver dovecot-sieve prometheus faketime)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # "No configuration" keeps the system Postfix unconfigured and off; the lab runs its own.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages present"
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
# The dev extra: the test tools (with the postgres extra: the tests use PostgreSQL too) and
# the linters .ci/run runs (ruff, mypy). The runtime dependencies at the versions the Docker
# image and the systemd install get (deploy/constraints.txt): the tests run on what ships.
echo "setup: pip install -c deploy/constraints.txt -e '.[dev]'"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c deploy/constraints.txt -e '.[dev]'
echo "setup: done"
