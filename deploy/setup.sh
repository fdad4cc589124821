#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine for postroom's development and CI, run as root:
# the mail servers the test lab starts (never as system services), then .venv with the project.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix openssl imapfilter swaks python3-venv)
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
echo "setup: pip install -e '.[test]'"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "setup: done"
