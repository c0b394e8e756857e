"""The portable llama.cpp build and its CPU guards: what a user on another x86-64 machine relies on.

The first release crashed (SIGSEGV at the first decode) on an Intel Xeon VM that advertises AMX without granting
its tile state, and its wheel carried host-specific instructions. These tests hold the guards for paths this
machine may never take (fake /proc/cpuinfo text, a refused AMX request) and check the installed build itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import llama_cpp
import pytest

from models.assets import model_path
from models.embedded import cpu, llama_build

HASWELL = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 lm\n"
AMX_VM = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f amx_bf16 amx_tile amx_int8\n"
OLD_CPU = "processor\t: 0\nflags\t\t: fpu sse4_2 avx lm\n"


def test_amx_advertised_but_refused_turns_extra_buffer_types_off() -> None:
    asked: list[bool] = []

    def refused() -> bool:
        asked.append(True)
        return False

    assert cpu.extra_buffer_types_safe(cpu.cpu_flags(AMX_VM), granted=refused) is False
    assert asked == [True]
    assert cpu.extra_buffer_types_safe(cpu.cpu_flags(AMX_VM), granted=lambda: True) is True


def test_no_amx_keeps_extra_buffer_types_without_asking_the_kernel() -> None:
    def must_not_ask() -> bool:
        raise AssertionError("the tile state is only requested where AMX is advertised")

    assert cpu.extra_buffer_types_safe(cpu.cpu_flags(HASWELL), granted=must_not_ask) is True


def test_the_real_tile_state_request_answers_on_this_machine() -> None:
    # The real arch_prctl call: refused (EINVAL) without AMX, granted where the kernel has it; never a crash.
    granted = cpu._request_tile_state()
    assert isinstance(granted, bool)
    if not any(f in cpu.cpu_flags() for f in cpu.AMX_FLAGS):
        assert granted is False
        assert cpu.extra_buffer_types_safe() is True


def test_a_cpu_below_the_baseline_is_refused_with_the_remedy() -> None:
    with pytest.raises(cpu.CpuUnsupportedError) as err:
        cpu.check_baseline(cpu.cpu_flags(OLD_CPU), machine="x86_64")
    message = str(err.value)
    assert "avx2" in message and "fma" in message and "f16c" in message and "bmi2" in message
    assert "PARLEY_LLAMA_CMAKE_ARGS" in message
    cpu.check_baseline(cpu.cpu_flags(HASWELL), machine="x86_64")
    cpu.check_baseline()  # this machine runs the portable build


def _library(tmp_path: Path, name: str, flags: list[str]) -> Path:
    src = tmp_path / f"{name}.c"
    # A loop gcc vectorises with whatever the flags allow: zmm registers under -mavx512f.
    src.write_text("void add(float *restrict a, const float *restrict b, int n) {"
                   " for (int i = 0; i < n; i++) a[i] += b[i] * 2.0f; }\n")
    lib = tmp_path / f"lib{name}.so"
    subprocess.run(["gcc", "-O3", "-shared", "-fPIC", *flags, "-o", str(lib), str(src)], check=True)
    return lib


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (build-essential, which set-up installs)")
def test_the_scan_finds_avx512_in_a_wheel_and_passes_an_avx2_one(tmp_path: Path) -> None:
    for name, flags, expect_hits in (("wide", ["-mavx512f", "-mprefer-vector-width=512"], True),
                                     ("portable", ["-mavx2", "-mfma"], False)):
        wheel = tmp_path / f"{name}-0-py3-none-linux_x86_64.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.write(_library(tmp_path, name, flags), f"llama_cpp/lib/lib{name}.so")
        hits = llama_build.forbidden_instructions(wheel)
        assert bool(hits) is expect_hits, (name, hits)


def test_the_installed_llama_cpp_is_the_verified_portable_wheel() -> None:
    _, version, sdist_sha = llama_build.pin()
    flags, portable = llama_build.cmake_args()
    out = llama_build.build_dir(sdist_sha, flags)
    wheels = list(out.glob(f"llama_cpp_python-{version}-*.whl"))
    assert len(wheels) == 1, f"set-up leaves exactly one wheel in {out}"
    lib = llama_build.installed_lib(sys.executable)
    assert lib is not None
    # Whatever pip's or uv's caches held, the environment runs the bytes of the wheel built here.
    assert llama_build.sha256(lib) == llama_build.member_sha(wheels[0], llama_build.LIB_FOR_CHECK)
    if portable:
        assert (out / "verified").exists()
        assert llama_build.forbidden_instructions(wheels[0]) == {}

        info = llama_cpp.llama_print_system_info().decode()
        assert "AVX2 = 1" in info and "AVX512 = 1" not in info and "AMX_INT8 = 1" not in info, info


@pytest.mark.models
def test_the_lm_answers_with_extra_buffer_types_off() -> None:
    """The path a machine with refused AMX takes: the real model loads and decodes without weight repacking."""
    from models.embedded.llama import LlamaLM

    lm = LlamaLM(model_path("qwen2.5-0.5b") / "model.gguf", "qwen2.5-0.5b", 512, 2, extra_buffer_types=False)
    assert lm.llm.model_params.use_extra_bufts is False
    tokens = lm.llm.tokenize(b"The capital of France is", add_bos=False)
    words = lm.llm.detokenize([t for _, t in zip(range(4), lm.llm.generate(tokens, temp=0.0), strict=False)])
    assert b"Paris" in words, words


def test_the_lm_check_reports_a_bad_model_and_a_crash_by_signal(tmp_path: Path) -> None:
    # A GGUF that is not one: the child fails and the parent says which check, on which CPU, and the remedy.
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(llama_build.BuildError) as err:
        llama_build.check(sys.executable, bogus)
    assert "decode one token" in str(err.value) and "Remedy" in str(err.value)
    # What the first release did on the AMX VM: the decoding process dies by SIGSEGV. The set-up survives it.
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    with pytest.raises(llama_build.BuildError) as err:
        llama_build.check(str(crashing), model_path("qwen2.5-0.5b") / "model.gguf")
    assert "killed by signal 11" in str(err.value)
