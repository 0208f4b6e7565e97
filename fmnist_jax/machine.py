"""What machine a figure or a recording comes from: the CPU's model, its flags, and the instruction set that
XLA:CPU generates code for (the host's best, or the cap that `XLA_FLAGS=--xla_cpu_max_isa=...` sets).

XLA:CPU compiles for the processor it runs on, so two CPUs that share a model name (an AVX2-only and an AVX-512
AMD EPYC both report "AMD EPYC") can round differently; and XLA:CPU splits long reductions (a sum, a weight
gradient's product) over its threads, one per CPU the process may use, so a run's bits also depend on that count.
The model, the instruction set and the thread count together name a CPU kind. Reads /proc/cpuinfo (Linux);
elsewhere the model is what `platform` knows and the flags are empty.
"""

from __future__ import annotations

import functools
import os
import pathlib
import platform
import re

# XLA:CPU's instruction sets, oldest first (the values `--xla_cpu_max_isa` accepts), each with the
# /proc/cpuinfo flag that shows a CPU has it.
ISAS = (
    ("SSE4_2", "sse4_2"),
    ("AVX", "avx"),
    ("AVX2", "avx2"),
    ("AVX512", "avx512f"),
    ("AVX512_VNNI", "avx512_vnni"),
    ("AVX512_BF16", "avx512_bf16"),
    ("AMX", "amx_bf16"),
    ("AMX_FP16", "amx_fp16"),
)
# The flags that speed figures are printed with: the vector and matrix units the products can use.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")


@functools.cache
def _cpuinfo() -> str:
    try:
        return pathlib.Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"), or "unknown"."""
    found = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.M)
    return found.group(1).strip() if found else (platform.processor() or "unknown")


def cpu_flags() -> frozenset[str]:
    """Every flag of the first CPU in /proc/cpuinfo (empty where there is none)."""
    found = re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), re.M)
    return frozenset(found.group(1).split()) if found else frozenset()


def speed_flags() -> list[str]:
    """The flags of SPEED_FLAGS that this CPU has, in that order."""
    flags = cpu_flags()
    return [f for f in SPEED_FLAGS if f in flags]


def max_isa_setting(xla_flags: str | None = None) -> str | None:
    """The cap that `--xla_cpu_max_isa=` in XLA_FLAGS (or `xla_flags`) sets, upper-cased; None without one."""
    found = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags)
    return found.group(1).upper() if found else None


def xla_cpu_isa(xla_flags: str | None = None) -> str:
    """The instruction set XLA:CPU generates code for here: the newest of ISAS that the CPU has, lowered to
    the XLA_FLAGS cap when there is one ("unknown" where the flags cannot be read)."""
    flags = cpu_flags()
    have = [name for name, flag in ISAS if flag in flags]
    if not have:
        return "unknown"
    names = [name for name, _ in ISAS]
    best = have[-1]
    cap = max_isa_setting(xla_flags)
    if cap in names and names.index(cap) < names.index(best):
        return cap
    return best


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which `taskset` narrows): XLA:CPU's thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_kind(xla_flags: str | None = None) -> str:
    """The CPU kind that bit-exact recordings are keyed by: "<model> / <the CPU's newest instruction set> / <N>
    threads" (the usable CPUs: XLA:CPU sums long reductions in as many parts). An XLA_FLAGS cap below that set is
    named after it ("AVX512_BF16, XLA:CPU capped at AVX2"): a capped CPU is a kind of its own, never the kind of a
    CPU whose newest set is the cap (capped at AVX2, an AVX-512 EPYC keeps its own bits, not an AVX2 EPYC's)."""
    best, targeted = xla_cpu_isa(""), xla_cpu_isa(xla_flags)
    isa = best if targeted == best else f"{best}, XLA:CPU capped at {targeted}"
    threads = usable_cpus()
    return f"{cpu_model()} / {isa} / {threads} thread{'s' if threads != 1 else ''}"


def describe() -> dict[str, object]:
    """The machine as speed figures print it: CPU model, speed flags, XLA:CPU's instruction set, cores (those
    the machine has, and those this process may use)."""
    return {
        "cpu": cpu_model(),
        "flags": speed_flags(),
        "xla_cpu_isa": xla_cpu_isa(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cpus(),
    }
