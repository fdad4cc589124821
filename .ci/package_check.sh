#!/usr/bin/env bash
# What the packaging promises, checked on built artefacts rather than the checkout:
#  - `python -m build` makes an sdist and a wheel, both with LICENSE;
#  - the sdist ships the package and nothing of tests/, bench/ or deploy/;
#  - the wheel, installed into a fresh venv in a folder outside the checkout (so nothing of the
#    checkout is importable), gives `import postroom` but no `service`, `postroom --version`,
#    and `postroom check --offline` passes on the demo config (deploy/demo.sh's environment).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fail() { echo "package: $*" >&2; exit 1; }

"$root/.venv/bin/python" -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; fail "python -m build failed"; }
sdist=("$work"/dist/postroom-*.tar.gz)
wheel=("$work"/dist/postroom-*.whl)

sdist_files="$(tar -tzf "${sdist[0]}" | sed 's|^[^/]*/||')"
grep -qx LICENSE <<<"$sdist_files" || fail "no LICENSE in the sdist"
grep -qx service/postroom/__init__.py <<<"$sdist_files" || fail "no package in the sdist"
if grep -E '^(tests|bench|deploy|templates)/.' <<<"$sdist_files"; then fail "the sdist ships the files above"; fi
"$root/.venv/bin/python" -m zipfile -l "${wheel[0]}" | grep -q 'dist-info/licenses/LICENSE' || fail "no LICENSE in the wheel"

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c "$root/deploy/constraints.txt" "${wheel[0]}"
cd "$work"
"$work/venv/bin/python" -c "import postroom" || fail "the wheel gives no postroom module"
if "$work/venv/bin/python" -c "import service" 2>/dev/null; then fail "the wheel installs a 'service' module"; fi
"$work/venv/bin/postroom" --version
ALICE_PASSWORD=x BOB_PASSWORD=x CAROL_PASSWORD=x HOOK_SECRET="whsec_$(printf 'demo' | base64)" \
  POSTROOM_TEMPLATES="$root/templates" POSTROOM_STATE_DIR="$work/state" \
  "$work/venv/bin/postroom" --config "$root/deploy/demo/postroom.yaml" check --offline
# A newcomer's first steps from the wheel alone: a starter project that checks clean as written.
"$work/venv/bin/postroom" init demo
(cd demo && "$work/venv/bin/postroom" check --offline) || fail "postroom init's project does not pass check --offline"
[[ ! -e "$work/state" && ! -e demo/state ]] || fail "check --offline wrote a store"
