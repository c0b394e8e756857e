"""What this x86-64 CPU and kernel let llama.cpp use: the portable build's baseline and AMX's tile state.

Parley builds llama.cpp without host-specific flags (models/embedded/llama_build.py): AVX2, FMA, F16C and BMI2,
nothing newer. That build dies with SIGILL on an older CPU, so the LM refuses to load there with a message instead.

AMX is the other trap. A CPU (or a VM's virtual CPU) can advertise AMX in CPUID while the kernel does not grant the
process the tile-data state; Linux hands it out only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)`), and in a VM whose host never enabled it the request is refused. llama.cpp's weight
repacking ("extra buffer types") is where its AMX kernels live; on such a machine a native build faulted at the
first decode. The portable build has no AMX code, but a user may build natively (PARLEY_LLAMA_CMAKE_ARGS), so the LM
turns extra buffer types off wherever AMX is advertised and refused.

This module reads only /proc/cpuinfo and makes one syscall, so it imports nothing outside the standard library:
set-up runs it before any package is installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Callable
from functools import cache
from pathlib import Path

# What the portable build is compiled for (ggml's -mavx -mavx2 -mfma -mf16c -mbmi2): Intel Haswell (2013) and
# later, AMD Excavator (2015) / Zen and later. Names as /proc/cpuinfo spells them.
BASELINE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2")
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")

SYS_ARCH_PRCTL = 158  # x86-64 syscall number
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


class CpuUnsupportedError(RuntimeError):
    """The CPU lacks an instruction set the portable llama.cpp build uses."""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The first processor's flags from /proc/cpuinfo (or the given text)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def missing_baseline(flags: frozenset[str]) -> list[str]:
    """Baseline instruction sets this CPU lacks; empty where the portable build runs."""
    return [f for f in BASELINE_FLAGS if f not in flags]


def check_baseline(flags: frozenset[str] | None = None, machine: str | None = None) -> None:
    """Raise CpuUnsupportedError, naming what is missing and the remedy, where the portable build cannot run."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return  # other architectures build natively (see the README); nothing to check here
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return  # no /proc/cpuinfo to read: let llama.cpp try
    missing = missing_baseline(flags)
    if missing:
        raise CpuUnsupportedError(
            f"this CPU lacks {', '.join(missing)}; Parley's portable llama.cpp build needs x86-64 with "
            f"{', '.join(BASELINE_FLAGS)} (Intel Haswell or AMD Zen and later). Build natively instead: "
            "PARLEY_LLAMA_CMAKE_ARGS='-DGGML_NATIVE=ON' ./parley.sh setup serve"
        )


def _request_tile_state() -> bool:
    """Ask the kernel for AMX tile-data permission; True when granted (asking twice is harmless)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    return int(libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) == 0


@cache
def amx_state_granted() -> bool:
    """True when this process may execute AMX instructions."""
    if platform.machine() != "x86_64" or platform.system() != "Linux":
        return False
    return _request_tile_state()


def extra_buffer_types_safe(
    flags: frozenset[str] | None = None, granted: Callable[[], bool] = amx_state_granted
) -> bool:
    """Whether llama.cpp may use its extra buffer types (weight repacking, AMX kernels) here.

    False exactly where AMX is advertised but its state is refused: the machine the first release crashed on.
    """
    flags = cpu_flags() if flags is None else flags
    if not any(f in flags for f in AMX_FLAGS):
        return True
    return granted()
