#!/usr/bin/env bash
# Parley's entry point. Every command first sets up what it needs (idempotent, fast when already done):
#   ./parley.sh serve [server.py args]   Debian packages, .venv, models; then the server on the embedded stack
#   ./parley.sh test  [pytest args]      the same plus test tools; then ruff, mypy, (with CI=true) the fresh-install
#                                        check, and pytest in a loopback-only network namespace (browser, SIP too)
#   ./parley.sh setup [serve|test]       set-up only
#   ./parley.sh lock                     refresh requirements/*.txt (the locks every set-up installs exactly)
#   ./parley.sh bench [args]             python -m benchmarks.latency (see benchmarks/README.md)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=$VENV/bin/python
UV=$VENV/bin/uv
REQ=requirements

SERVE_DEBS=(build-essential binutils cmake python3-dev python3-venv)
TEST_DEBS=(chromium firefox-esr sip-tester pocketsphinx-testdata iproute2 util-linux curl espeak-ng sox git)

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

# uv reads no pip configuration: pass on pip's find-links (a local wheelhouse, where a machine has one), and
# take the CPU torch wheel from PyTorch's own page where no find-links folder holds it.
uv_links() {
  LINKS=()
  local links="${PIP_FIND_LINKS:-}" have_torch=""
  [ -n "$links" ] || links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
  for l in $links; do
    LINKS+=(--find-links "$l")
    compgen -G "$l/torch-2.13.0+cpu-*.whl" >/dev/null && have_torch=1
  done
  [ -n "$have_torch" ] || LINKS+=(--find-links "${PARLEY_TORCH_LINKS:-https://download.pytorch.org/whl/cpu/torch/}")
}

bootstrap() {
  [ -x "$PY" ] || { say "creating $VENV"; python3 -m venv "$VENV"; }
  if ! "$UV" --version 2>/dev/null | grep -qF "$(sed -n 's/^uv==\([^ ]*\).*/\1/p' $REQ/uv.txt)"; then
    say "installing uv (pinned in $REQ/uv.txt)"
    "$PY" -m pip install -q --require-hashes -r $REQ/uv.txt
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
  bootstrap
  # The lock for this mode; a venv synced for tests (a superset) serves too.
  local sum; sum=$(cat $REQ/$mode.txt | sha256sum | cut -c1-16)
  local tsum; tsum=$(cat $REQ/test.txt | sha256sum | cut -c1-16)
  if [ ! -f "$VENV/.parley-$mode-$sum" ] && [ ! -f "$VENV/.parley-test-$tsum" ]; then
    say "installing the locked Python packages ($REQ/$mode.txt)"
    uv_links
    "$UV" pip sync --quiet --python "$PY" "${LINKS[@]}" $REQ/$mode.txt
    rm -f "$VENV"/.parley-*
    touch "$VENV/.parley-$mode-$sum"
  fi
  # Never pip's or uv's cached build: a portable wheel, built once into .whl/ and verified (cpu flags, objdump).
  "$PY" -m models.embedded.llama_build ensure --python "$PY" --uv "$UV" >/dev/null
  if [ "$mode" = test ]; then "$PY" -m models.assets fetch --all; else "$PY" -m models.assets fetch; fi
  "$PY" -m models.embedded.llama_build check --python "$PY" "$("$PY" -m models.assets path qwen2.5-0.5b)/model.gguf"
  if [ "$mode" = test ]; then
    # The Firefox test's driver (puppeteer-core over WebDriver BiDi; it downloads no browser).
    local lock="tests/firefox/node_modules/.parley-$(sha256sum tests/firefox/package-lock.json | cut -c1-16)"
    if [ ! -f "$lock" ]; then
      say "installing the Firefox test driver (npm ci)"
      (cd tests/firefox && npm ci --no-audit --no-fund --loglevel=error) && touch "$lock"
    fi
  fi
}

# Refresh every lock from pyproject.toml (run after changing a dependency, commit the result, run the tests).
lock() {
  bootstrap
  uv_links
  local common=(--quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28)
  "$UV" pip compile "${common[@]}" -o $REQ/uv.txt $REQ/uv.in
  "$UV" pip compile "${common[@]}" --no-emit-package llama-cpp-python -o $REQ/serve.txt pyproject.toml
  "$UV" pip compile "${common[@]}" --no-emit-package llama-cpp-python --extra dev --extra step-audio \
    -c $REQ/torch-cpu.txt "${LINKS[@]}" -o $REQ/test.txt pyproject.toml
  "$UV" pip compile "${common[@]}" -o $REQ/llama-build.txt $REQ/llama-build.in
  local version; version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
  local hashes; hashes=$("$UV" pip compile "${common[@]}" --no-deps --no-header --no-annotate - <<<"llama-cpp-python==$version")
  { sed -n '1,2p' $REQ/llama.txt; echo "llama-cpp-python==$version $(grep -o -- '--hash=sha256:[0-9a-f]*' <<<"$hashes" | head -1)"; } > $REQ/llama.txt.new
  mv $REQ/llama.txt.new $REQ/llama.txt
  say "locks refreshed in $REQ/; run ./parley.sh test before committing them"
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
    # A clean copy of the tree with empty caches: set-up, serve, one real call (needs the registries, so it runs
    # before the tests' namespace). CI always; locally with PARLEY_FRESH_CHECK=1 (it takes ~10 minutes).
    if [ "${PARLEY_FRESH_CHECK:-${CI:-}}" = 1 ] || [ "${PARLEY_FRESH_CHECK:-${CI:-}}" = true ]; then
      say "fresh-install check (python -m benchmarks.fresh_install)"; "$PY" -m benchmarks.fresh_install
    fi
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
  lock)
    lock
    ;;
  bench)
    setup test
    exec "$PY" -m benchmarks.latency "$@"
    ;;
  *)
    echo "usage: $0 serve|test|setup|lock|bench [args]" >&2
    exit 2
    ;;
esac
