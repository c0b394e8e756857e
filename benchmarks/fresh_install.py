"""The fresh-machine check: a clean copy of the tree, empty caches, the README's serve command, one real call.

    python -m benchmarks.fresh_install [--out bench-out/fresh-install.json] [--keep]

What a new user (and CI) does, minus the machine: the files git would commit are copied into an empty folder (no
.venv, no .whl, no node_modules), and `./parley.sh serve` runs there with PIP_CACHE_DIR, UV_CACHE_DIR and
PARLEY_MODELS pointed at new, empty folders, so nothing built or downloaded before can stand in: the locked
packages are fetched, llama-cpp-python is compiled with the portable flags, the models are assembled. The server
then runs in a network namespace with only loopback, answers five spoken questions on a real WebRTC call with the
real embedded LM, and is started a second time to time a warm start. `./parley.sh test` runs this when CI=true (or
PARLEY_FRESH_CHECK=1); it needs the package registries, so it runs outside the tests' namespace.

Reports, in the JSON and on stdout: first set-up + start seconds (command to /readyz 200), second start seconds,
and the questions' voice-to-voice figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.runinfo import git_commit, load_average, machine
from benchmarks.server_process import ServerError, free_port, stop_process_group

ROOT = Path(__file__).resolve().parent.parent


def copy_tree(dest: Path) -> int:
    """The files a commit of the working tree would hold (tracked, and untracked but not ignored)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    count = 0
    for name in filter(None, names):
        src = ROOT / name
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        count += 1
    return count


@cache
def namespaced() -> bool:
    """Whether a loopback-only network namespace can be made here (root, util-linux, iproute2)."""
    if not all(shutil.which(t) for t in ("unshare", "nsenter", "ip")):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def in_namespace(pid: int, argv: list[str]) -> list[str]:
    """`argv` run inside the network namespace of `pid` (the server), where 127.0.0.1 is its loopback."""
    return ["nsenter", "-t", str(pid), "-n", *argv] if namespaced() else argv


def readyz(pid: int, url: str) -> bool:
    probe = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/readyz', timeout=2)"
    return subprocess.run(in_namespace(pid, [sys.executable, "-c", probe, url]), capture_output=True).returncode == 0


def start(tree: Path, env: dict[str, str], port: int, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """`./parley.sh setup serve` on the host network (it downloads), then `./parley.sh serve` in a new network
    namespace with only loopback; `unshare` and parley.sh exec in place, so the pid returned is the server's."""
    t0 = time.monotonic()
    with log.open("ab") as out:
        setup = subprocess.run(["./parley.sh", "setup", "serve"], cwd=tree, env=env, stdout=out,
                               stderr=subprocess.STDOUT)
        if setup.returncode != 0:
            raise ServerError(f"./parley.sh setup serve failed ({setup.returncode}); see {log}")
        serve = ["./parley.sh", "serve", "--host", "127.0.0.1", "--port", str(port)]
        if namespaced():
            serve = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *serve]
        proc = subprocess.Popen(serve, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, t0


def wait_ready(proc: subprocess.Popen[bytes], url: str, t0: float, timeout: float, log: Path) -> float:
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise ServerError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if readyz(proc.pid, url):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise ServerError(f"not ready within {timeout:.0f} s; see {log}")


def ask_in_namespace(pid: int, url: str) -> dict[str, Any]:
    """The five questions, from this checkout's environment, inside the server's network namespace."""
    code = ("import asyncio, json, sys; from benchmarks.questions import ask_all; "
            "print(json.dumps(asyncio.run(ask_all(sys.argv[1], {}))))")
    proc = subprocess.run(in_namespace(pid, [sys.executable, "-c", code, url]), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise ServerError(f"the call failed: {proc.stderr[-2000:]}")
    latencies: list[float] = json.loads(proc.stdout.strip().splitlines()[-1])
    heard = [x for x in latencies if x == x]
    if len(heard) < len(latencies):
        raise ServerError(f"{len(latencies) - len(heard)} of {len(latencies)} questions got no audible reply")
    return {"questions": len(latencies), "voice_to_voice_ms_median": round(statistics.median(heard)),
            "voice_to_voice_ms_max": round(max(heard))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fresh_install", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "fresh-install.json")
    p.add_argument("--timeout", type=float, default=2400.0, help="seconds for the first set-up and start")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (for a look at its logs)")
    args = p.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="parley-fresh-"))
    tree, log = scratch / "parley", scratch / "serve.log"
    env = {**os.environ, "PIP_CACHE_DIR": str(scratch / "pip-cache"), "UV_CACHE_DIR": str(scratch / "uv-cache"),
           "PARLEY_MODELS": str(scratch / "models"), "PARLEY_FRESH_CHECK": "0"}
    env.pop("VIRTUAL_ENV", None)
    run = {"machine": machine(), "commit": git_commit(), "load": load_average(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    result: dict[str, Any] = {"run": run, "files": copy_tree(tree), "scratch": str(scratch)}
    print(f"[fresh] {result['files']} files copied to {tree}; caches and models under {scratch}", flush=True)
    try:
        for attempt in ("first", "second"):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc, t0 = start(tree, env, port, log)
            try:
                seconds = wait_ready(proc, url, t0, args.timeout, log)
                result[f"{attempt}_start_s"] = round(seconds, 1)
                print(f"[fresh] {attempt} start (set-up included) ready after {seconds:.0f} s", flush=True)
                if attempt == "first":
                    result.update(ask_in_namespace(proc.pid, url))
            finally:
                stop_process_group(proc)
        build = next((tree / ".whl").glob("llama-*/build.json"), None)
        if build is not None:
            result["llama_build"] = json.loads(build.read_text())
    except ServerError as exc:
        print(f"[fresh] FAILED: {exc}\n[fresh] log: {log}", file=sys.stderr)
        return 1
    finally:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"[fresh] ok: {json.dumps({k: v for k, v in result.items() if k not in ('run', 'llama_build')})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
