#!/usr/bin/env bash
# Parley's entry point. Every command first sets up what it needs (idempotent, fast when already done):
#   ./parley.sh serve [server.py args]   Debian packages, .venv, models; then the server on the embedded stack
#   ./parley.sh test  [pytest args]      the same plus test tools; then ruff, mypy and pytest in a loopback-only
#                                        network namespace (the browser and SIP tests included)
#   ./parley.sh setup [serve|test]       set-up only
#   ./parley.sh bench [args]             python -m benchmarks.latency (see benchmarks/README.md)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=$VENV/bin/python
TORCH="torch==2.13.0"  # CPU build; pinned first so no dependency drags in a CUDA build

SERVE_DEBS=(build-essential cmake python3-dev python3-venv)
TEST_DEBS=(chromium firefox-esr sip-tester pocketsphinx-testdata iproute2 util-linux curl espeak-ng sox)

say() { printf '\033[1m[parley]\033[0m %s\n' "$*" >&2; }

need_debs() {
  local missing=()
  for pkg in "$@"; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then say "missing Debian packages: ${missing[*]} (run as root or install them)"; exit 1; fi
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

setup() {
  local mode=$1
  if command -v dpkg-query >/dev/null; then
    need_debs "${SERVE_DEBS[@]}"
    if [ "$mode" = test ]; then
      need_debs "${TEST_DEBS[@]}"
      command -v node >/dev/null || need_debs nodejs npm
    fi
  fi
  [ -x "$PY" ] || { say "creating $VENV"; python3 -m venv "$VENV"; }
  local stamp="$VENV/.parley-$mode-$(cat pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    say "installing Python packages ($mode; llama-cpp-python compiles once, ~7 min on 2 cores)"
    "$PY" -m pip install -q --upgrade pip
    if [ "$mode" = test ]; then
      "$PY" -m pip install -q "$TORCH"
      "$PY" -m pip install -q -e ".[dev,step-audio]"
    else
      "$PY" -m pip install -q -e .
    fi
    touch "$stamp"
  fi
  "$PY" -m models.assets fetch
  if [ "$mode" = test ]; then
    # The Firefox test's driver (puppeteer-core over WebDriver BiDi; it downloads no browser).
    local lock="tests/firefox/node_modules/.parley-$(sha256sum tests/firefox/package-lock.json | cut -c1-16)"
    if [ ! -f "$lock" ]; then
      say "installing the Firefox test driver (npm ci)"
      (cd tests/firefox && npm ci --no-audit --no-fund --loglevel=error) && touch "$lock"
    fi
  fi
}

cmd=${1:-serve}
shift || true
case "$cmd" in
  serve)
    setup serve
    exec "$PY" server.py "$@"
    ;;
  test)
    setup test
    say "ruff"; "$VENV/bin/ruff" check .
    say "mypy"; "$VENV/bin/mypy"
    say "pytest (in a network namespace with only loopback)"
    if unshare -n true 2>/dev/null; then
      exec unshare -n sh -c 'ip link set lo up && exec "$0" -m pytest "$@"' "$PY" "$@"
    else
      say "cannot create a network namespace here (needs root); running pytest on the host network"
      exec "$PY" -m pytest "$@"
    fi
    ;;
  setup)
    setup "${1:-test}"
    ;;
  bench)
    setup test
    exec "$PY" -m benchmarks.latency "$@"
    ;;
  *)
    echo "usage: $0 serve|test|setup|bench [args]" >&2
    exit 2
    ;;
esac
