#!/bin/sh
# Runs one Firefox turn against a fresh Parley server inside a network namespace of its own.
# usage: unshare -n tests/firefox/run.sh <port> <question.wav> <screenshot.png>
#
# Firefox gathers no ICE candidates in a namespace that has only loopback (it wants an interface and a default
# route). This namespace gets a veth pair whose two ends both stay inside it, and a default route into it:
# nothing can leave. The rest of the suite keeps its loopback-only namespace.
set -e
port=$1 wav=$2 shot=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
ip link set lo up
ip link add parley0 type veth peer name parley1
ip addr add 10.213.0.1/24 dev parley0
ip addr add 10.213.0.2/24 dev parley1
ip link set parley0 up
ip link set parley1 up
ip route add default dev parley0
cd "$root"
"${PYTHON:-.venv/bin/python}" server.py --port "$port" > "${shot%.png}.server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
i=0
until curl -sf "http://127.0.0.1:$port/healthz" | grep -q '"status": "ok"'; do
  i=$((i + 1)); [ $i -lt 900 ] || { echo "server not ready" >&2; exit 1; }; sleep 0.2
done
cd tests/firefox
node turn.mjs "http://127.0.0.1:$port" "$wav" "$shot"
