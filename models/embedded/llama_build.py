"""A portable llama-cpp-python wheel: built here from the pinned sdist, checked, installed; then a real decode.

llama-cpp-python ships no Linux wheel on PyPI, so every install compiles llama.cpp. Left to itself that build is
native to the machine it ran on (`-march=native`): a wheel built on one CPU faults on another, and pip's wheel
cache, keyed on the sdist and not on CMAKE_ARGS, hands that native wheel back to later installs. So set-up never
lets pip or uv build it: this module builds the wheel itself, with fixed flags and no cache, into `.whl/`, named
by the sdist's hash and the flags, and installs exactly that file.

    python -m models.embedded.llama_build ensure --python .venv/bin/python   # build if needed, verify, install
    python -m models.embedded.llama_build check --python .venv/bin/python GGUF   # load + decode in a subprocess

The flags are a fixed x86-64 baseline (AVX2, FMA, F16C, BMI2: Haswell / Zen and later; models/embedded/cpu.py
refuses older CPUs with a message) with AVX-512 and AMX compiled out, and the built libraries are scanned with
objdump for any AVX-512 or AMX instruction before they are installed. PARLEY_LLAMA_CMAKE_ARGS replaces the flags
(a native build is faster on one machine and belongs to that machine alone); the scan is skipped then.

Standard library only: it runs before the environment it installs into is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PIN_FILE = ROOT / "requirements" / "llama.txt"
BUILD_CONSTRAINTS = ROOT / "requirements" / "llama-build.txt"
WHEELS = ROOT / ".whl"
PORTABLE_CMAKE_ARGS = " ".join((
    "-DGGML_NATIVE=OFF",
    "-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
    "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AVX512_VNNI=OFF",
    "-DGGML_AVX512_BF16=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
    # Parley never loads llava/mtmd; leaving it out saves ~40% of the build.
    "-DLLAVA_BUILD=OFF",
))
# AVX-512 registers and the AMX mnemonics: none may appear in a portable build.
FORBIDDEN = re.compile(r"%zmm\d|%k[1-7]\b|\b(tdpb[a-z]*|tdpfp16ps|tileloadd[a-z0-9]*|tilestored|ldtilecfg|tilezero|"
                       r"tilerelease)\b")
LIB_FOR_CHECK = "llama_cpp/lib/libggml-cpu.so"


class BuildError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[parley] {msg}", file=sys.stderr, flush=True)


def pin() -> tuple[str, str, str]:
    """(requirement line, version, sdist sha256) from requirements/llama.txt."""
    for line in PIN_FILE.read_text().splitlines():
        m = re.match(r"\s*llama-cpp-python==(\S+)\s+--hash=sha256:([0-9a-f]{64})", line)
        if m:
            return m.group(0).strip(), m.group(1), m.group(2)
    raise BuildError(f"{PIN_FILE} has no 'llama-cpp-python==V --hash=sha256:H' line")


def cmake_args() -> tuple[str, bool]:
    """(the flags, whether they are the portable ones)."""
    custom = os.environ.get("PARLEY_LLAMA_CMAKE_ARGS", "").strip()
    return (custom, False) if custom else (PORTABLE_CMAKE_ARGS, True)


def build_dir(sdist_sha: str, flags: str) -> Path:
    key = hashlib.sha256(f"{sdist_sha}\n{flags}\n{platform.machine()}".encode()).hexdigest()[:12]
    return WHEELS / f"llama-{key}"


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_sdist(python: str, version: str, want_sha: str) -> Path:
    src = WHEELS / "src"
    sdist = src / f"llama_cpp_python-{version}.tar.gz"
    if sdist.exists() and sha256(sdist) == want_sha:
        return sdist
    src.mkdir(parents=True, exist_ok=True)
    say(f"downloading the llama-cpp-python {version} sdist")
    req = src / "requirement.txt"
    req.write_text(pin()[0] + "\n")
    subprocess.run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    "--require-hashes", "-r", str(req), "-d", str(src)], check=True)
    if not sdist.exists() or sha256(sdist) != want_sha:
        raise BuildError(f"{sdist} is missing or does not match its pinned sha256 {want_sha}")
    return sdist


def build(python: str, uv: str, sdist: Path, flags: str, out: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="llama-wheel-", dir=WHEELS))
    env = {**os.environ, "CMAKE_ARGS": flags, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
           "FORCE_CMAKE": "1"}
    say(f"building llama-cpp-python from source with {flags!r} (~4 min on 2 cores)")
    t0 = time.monotonic()
    try:
        subprocess.run([uv, "build", "--quiet", "--wheel", "--no-cache", "--python", python, "--build-constraints",
                        str(BUILD_CONSTRAINTS), "--out-dir", str(tmp), str(sdist)], check=True, env=env)
        wheels = list(tmp.glob("llama_cpp_python-*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"the build left {len(wheels)} wheels in {tmp}")
        out.mkdir(parents=True, exist_ok=True)
        wheel = out / wheels[0].name
        shutil.move(str(wheels[0]), wheel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - t0
    (out / "build.json").write_text(json.dumps({
        "wheel": wheel.name, "sha256": sha256(wheel), "cmake_args": flags, "build_seconds": round(seconds, 1),
        "built_on": cpu_model(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")
    say(f"built {wheel.name} in {seconds:.0f} s")
    return wheel


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def forbidden_instructions(wheel: Path) -> dict[str, int]:
    """Per shared library in the wheel: how many AVX-512 / AMX instructions objdump finds (empty = portable)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise BuildError("objdump (Debian binutils) is needed to check the build; apt-get install binutils")
    found: dict[str, int] = {}
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if ".so" not in name:
                continue
            data = zf.read(name)
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:  # a wheel stores the .so, .so.0 and .so.0.x.y links as copies
                continue
            seen.add(digest)
            lib = Path(tmp) / digest
            lib.write_bytes(data)
            asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], check=True,
                                 capture_output=True, text=True).stdout
            hits = len(FORBIDDEN.findall(asm))
            if hits:
                found[name] = hits
    return found


def member_sha(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return hashlib.sha256(zf.read(member)).hexdigest()


def installed_lib(python: str) -> Path | None:
    code = ("import importlib.util as u; s = u.find_spec('llama_cpp'); "
            "print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()
    if not out:
        return None
    lib = Path(out).parent / LIB_FOR_CHECK
    return lib if lib.exists() else None


def ensure(python: str, uv: str) -> Path:
    """Build (once per sdist and flags), verify and install the wheel; idempotent and fast when done."""
    _, version, sdist_sha = pin()
    flags, portable = cmake_args()
    out = build_dir(sdist_sha, flags)
    wheels = sorted(out.glob(f"llama_cpp_python-{version}-*.whl"))
    wheel = wheels[0] if wheels else build(python, uv, fetch_sdist(python, version, sdist_sha), flags, out)
    verified = out / "verified"
    if portable and not verified.exists():
        hits = forbidden_instructions(wheel)
        if hits:
            raise BuildError(f"{wheel} is not portable: AVX-512/AMX instructions in {hits}; delete {out} and rerun")
        verified.write_text("no AVX-512 or AMX instructions\n")
    elif not portable:
        say(f"PARLEY_LLAMA_CMAKE_ARGS is set: {wheel.name} is built for this machine only")
    lib = installed_lib(python)
    if lib is None or sha256(lib) != member_sha(wheel, LIB_FOR_CHECK):
        say(f"installing {wheel.relative_to(ROOT)}")
        subprocess.run([uv, "pip", "install", "--quiet", "--python", python, "--no-deps", "--reinstall",
                        str(wheel)], check=True)
        lib = installed_lib(python)
        if lib is None or sha256(lib) != member_sha(wheel, LIB_FOR_CHECK):
            raise BuildError(f"after installing {wheel}, the environment still holds another llama.cpp build")
    return wheel


CHECK = """
import sys
from llama_cpp import Llama
from models.embedded.llama import model_params_with
from models.embedded.cpu import extra_buffer_types_safe
with model_params_with(extra_buffer_types_safe()):
    llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
tokens = llm.tokenize(b"Hello", add_bos=True)
next(iter(llm.generate(tokens, temp=0.0)))
"""


def check(python: str, gguf: Path) -> None:
    """Load the GGUF and decode one token in a child process, so a crash is reported instead of inherited."""
    proc = subprocess.run([python, "-c", CHECK, str(gguf)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
    raise BuildError(
        f"the LM check (load {gguf.name}, decode one token with llama.cpp) {how} on this CPU ({cpu_model()}).\n"
        f"{proc.stderr[-1500:]}\nRemedy: delete .whl/ and rerun ./parley.sh setup to rebuild llama-cpp-python "
        "with the portable flags (or unset PARLEY_LLAMA_CMAKE_ARGS)."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.embedded.llama_build")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("ensure", help="build if needed, verify and install the llama-cpp-python wheel")
    e.add_argument("--python", default=sys.executable)
    e.add_argument("--uv", default=shutil.which("uv") or "uv")
    c = sub.add_parser("check", help="load a GGUF and decode one token in a subprocess")
    c.add_argument("--python", default=sys.executable)
    c.add_argument("gguf", type=Path)
    s = sub.add_parser("scan", help="count AVX-512/AMX instructions in a wheel's libraries")
    s.add_argument("wheel", type=Path)
    args = p.parse_args(argv)
    try:
        if args.cmd == "ensure":
            print(ensure(args.python, args.uv))
        elif args.cmd == "check":
            check(args.python, args.gguf)
        else:
            hits = forbidden_instructions(args.wheel)
            print(json.dumps(hits))
            return 1 if hits else 0
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
