"""The CPU kind that recordings are keyed by: the model, its newest instruction set (and a cap on XLA:CPU's), the
usable CPUs."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT

from fmnist_jax import machine

AVX2_EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
AVX512_EPYC = "model name\t: AMD EPYC\nflags\t\t: sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16\n"
AVX512_XEON = "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: sse4_2 avx avx2 fma avx512f avx512_bf16\n"
AMX_XEON = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 fma avx512f avx512_bf16 amx_tile amx_bf16\n"


@pytest.fixture
def cpuinfo(monkeypatch):
    """Sets what /proc/cpuinfo says."""
    return lambda text: monkeypatch.setattr(machine, "_cpuinfo", lambda: text)


@pytest.mark.parametrize(
    "text, flags, isa",
    [
        (AVX2_EPYC, "", "AVX2"),
        (AVX512_XEON, "", "AVX512_BF16"),
        (AVX512_XEON, "--xla_cpu_max_isa=avx2", "AVX2"),  # a cap below the CPU's best lowers it
        (AVX512_XEON, "--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX512", "AVX512"),
        (AVX2_EPYC, "--xla_cpu_max_isa=AVX512_BF16", "AVX2"),  # a cap above it changes nothing
        (AVX2_EPYC, "--xla_cpu_max_isa=NEON", "AVX2"),  # nor one XLA:CPU does not name for x86
        (AMX_XEON, "", "AMX"),
        ("model name\t: ARM\n", "", "unknown"),  # no x86 flags
    ],
)
def test_the_instruction_set_is_the_best_the_cpu_has_under_the_cap(cpuinfo, text, flags, isa):
    cpuinfo(text)
    assert machine.xla_cpu_isa(flags) == isa


def test_the_kind_names_the_model_the_instruction_set_and_the_usable_cpus(cpuinfo, monkeypatch):
    """XLA:CPU sums long reductions in as many parts as it has threads, so two processes allowed 1 and 2 CPUs of one
    machine give other bits: the count is part of the kind."""
    cpuinfo(AVX2_EPYC)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert machine.cpu_kind("") == "AMD EPYC / AVX2 / 3 threads"
    assert machine.speed_flags() == ["avx2", "fma"] and machine.describe()["usable_cores"] == 3
    monkeypatch.delattr(machine.os, "sched_getaffinity", raising=False)  # not Linux: the machine's count
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 6)
    assert machine.cpu_kind("--xla_cpu_max_isa=AVX") == "AMD EPYC / AVX2, XLA:CPU capped at AVX / 6 threads"


def test_a_cap_on_xla_cpu_is_a_kind_of_its_own_not_the_kind_of_a_cpu_without_the_newer_sets(cpuinfo, monkeypatch):
    """Capped at AVX2, an AVX-512 CPU keeps its own bits (the product libraries XLA calls choose their kernels by
    the processor), not an AVX2 CPU's: the two must not share a recording."""
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cpuinfo(AVX2_EPYC)
    avx2 = machine.cpu_kind("")
    cpuinfo(AVX512_EPYC)
    capped = machine.cpu_kind("--xla_cpu_max_isa=AVX2")
    assert (
        avx2 == "AMD EPYC / AVX2 / 2 threads" and capped == "AMD EPYC / AVX512_BF16, XLA:CPU capped at AVX2 / 2 threads"
    )
    assert (
        machine.cpu_kind("--xla_cpu_max_isa=AVX512_BF16")
        == machine.cpu_kind("")
        == "AMD EPYC / AVX512_BF16 / 2 threads"
    )
    assert machine.xla_cpu_isa("--xla_cpu_max_isa=AVX2") == "AVX2"  # what the speed figures print


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_a_process_narrowed_to_one_cpu_is_a_kind_of_its_own():
    """What a process narrowed by `taskset` (its affinity) reports, read in a child process."""
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from fmnist_jax import machine; " + (
        "print(machine.cpu_kind())"
    )
    narrowed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert narrowed.stdout.strip() == machine.cpu_kind().rsplit(" / ", 1)[0] + " / 1 thread"


def test_the_speed_flags_are_listed_in_their_own_order_not_the_alphabets_nor_the_kernels(cpuinfo):
    """The vector units before the matrix units, as SPEED_FLAGS lists them: what speed figures print (the kernel lists
    amx_bf16 before amx_tile)."""
    cpuinfo("model name\t: X\nflags\t\t: amx_bf16 fma sse2 amx_tile avx512_bf16 avx2 avx512f\n")
    expected = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert machine.speed_flags() == expected and machine.describe()["flags"] == expected
