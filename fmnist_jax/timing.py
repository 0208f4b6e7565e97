"""Where a run's seconds go: the compile clock, the process's age, and a run's named phases.

`train_and_evaluate` times its phases (data, set-up, restore, compile, training, the wait for the last checkpoint,
evaluation, writing) and the XLA compilations inside them, logs them in one line and keeps them in results.json
under "seconds"; the benchmarks time their compilations with the same clock.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax

# The duration event JAX records around each XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT; a
# persistent-cache hit is recorded too, with its load time).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileClock:
    """The backend compilations JAX records while it is active: their count, and the seconds during which at least
    one of them ran.

    Timed here on the monotonic clock, from the start JAX announces (a scalar event, in the compiling thread) to its
    duration event, rather than summing JAX's durations: those come from `time.time()`, which a clock step on the
    machine stretches, and compilations in two threads would be counted twice. The union of the intervals can never
    exceed the time the clock was active."""

    def __init__(self) -> None:
        self.count = 0
        self.opened = time.perf_counter()
        self._started: dict[int, list[float]] = {}  # thread id -> starts of its compilations still running
        self._spans: list[tuple[float, float]] = []

    def on_scalar(self, event: str, value: float | int, **kwargs: Any) -> None:
        if event == COMPILE_EVENT:
            self._started.setdefault(threading.get_ident(), []).append(time.perf_counter())

    def on_duration(self, event: str, duration_secs: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT:
            starts = self._started.get(threading.get_ident())
            start = starts.pop() if starts else self.opened  # began before the clock was opened
            self.count += 1
            self._spans.append((start, time.perf_counter()))

    @property
    def seconds(self) -> float:
        return self.seconds_within(float("-inf"), float("inf"))

    def seconds_within(self, first: float, last: float) -> float:
        """The seconds between `first` and `last` (`time.perf_counter()` values) during which a compilation ran."""
        total, reached = 0.0, first
        for start, stop in sorted(self._spans):
            begin, end = max(start, reached), min(stop, last)
            if end > begin:
                total += end - begin
                reached = end
        return total


@contextlib.contextmanager
def compile_clock() -> Iterator[CompileClock]:
    """Within it, every XLA compilation is timed by the yielded clock (jax.monitoring's listeners)."""
    clock = CompileClock()
    jax.monitoring.register_scalar_listener(clock.on_scalar)
    jax.monitoring.register_event_duration_secs_listener(clock.on_duration)
    try:
        yield clock
    finally:
        jax.monitoring.unregister_event_duration_listener(clock.on_duration)
        jax.monitoring.unregister_scalar_listener(clock.on_scalar)


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), None where that cannot be read. Called as a run
    begins in a fresh `python main.py`, it is the start-up: the interpreter, the imports, the flags."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat, open("/proc/uptime", encoding="ascii") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


_START_UP_TAKEN: list[bool] = []  # one entry once a run has taken the process's start-up


def start_up() -> float | None:
    """The process's age at its first call (the start-up the process's first run paid: in `python main.py`, the
    interpreter, the imports, the flags); None at later calls, whose runs (the next seed of a benchmark, the next
    member of a comparison) paid none, and where the age cannot be read."""
    if _START_UP_TAKEN:
        return None
    _START_UP_TAKEN.append(True)
    return process_age()


class Phases:
    """Named wall-clock phases of one run, in the order they began (a phase entered twice adds up), and the XLA
    compilations inside them when a compile clock is given."""

    def __init__(self, clock: CompileClock | None = None, **known: float | None) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {k: v for k, v in known.items() if v is not None}
        self._spans: dict[str, list[tuple[float, float]]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self.seconds[name] = self.seconds.get(name, 0.0) + end - start
            self._spans.setdefault(name, []).append((start, end))

    def compilation_by_phase(self) -> dict[str, float]:
        """The seconds of compilation inside each timed phase (without a compile clock: none)."""
        if self.clock is None:
            return {}
        return {name: sum(self.clock.seconds_within(*span) for span in spans) for name, spans in self._spans.items()}

    def record(self) -> dict[str, Any]:
        """What results.json keeps: the phases, and the compilations' seconds (part of the phases, in all and by
        phase) and count."""
        record: dict[str, Any] = {"phases": dict(self.seconds)}
        if self.clock is not None:
            record.update(
                compilation=self.clock.seconds,
                compilations=self.clock.count,
                compilation_by_phase=self.compilation_by_phase(),
            )
        return record

    def line(self) -> str:
        """One log line: each phase's seconds, their sum, and the compilations' share."""
        parts = [f"{name.replace('_', ' ')} {seconds:.1f}" for name, seconds in self.seconds.items()]
        line = ", ".join(parts) + f" (s; in all {sum(self.seconds.values()):.1f} s)"
        if self.clock is not None:
            line += f"; XLA compiled {self.clock.count} programs in {self.clock.seconds:.1f} s of it"
        return line
