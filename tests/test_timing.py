"""The run's clocks: XLA compilations timed on the monotonic clock, the process's age, named phases."""

import itertools
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import timing


def test_the_compile_clock_counts_each_backend_compilation():
    from jax._src import dispatch

    assert dispatch.BACKEND_COMPILE_EVENT == timing.COMPILE_EVENT  # the event's name in the installed jax
    x = np.arange(7.0, dtype=np.float32)
    with timing.compile_clock() as clock:
        jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.125)(x).block_until_ready()
    assert clock.count == 1 and clock.seconds > 0
    jax.jit(lambda x: x * 7.5)(x).block_until_ready()  # after it: not counted
    assert clock.count == 1


def test_the_compile_clock_times_on_the_monotonic_clock_and_counts_overlapping_compilations_once(monkeypatch):
    from jax import monitoring

    event = timing.COMPILE_EVENT
    # A monotonic clock that ticks once a reading: the spans are known whatever the machine's speed.
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=itertools.count().__next__))
    with timing.compile_clock() as clock:
        # JAX's own duration (from time.time(), which a clock step stretches) is ignored: 1,000 s is not counted.
        monitoring.record_scalar(event, 0.0)
        monitoring.record_event_duration_secs(event, 1000.0)
        # Two threads compiling at once: their spans overlap, and the union is counted, not the sum.
        barrier = threading.Barrier(2)

        def compile_in_thread() -> None:
            monitoring.record_scalar(event, 0.0)
            barrier.wait()  # both have started before either ends
            monitoring.record_event_duration_secs(event, 0.05)

        threads = [threading.Thread(target=compile_in_thread) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        monitoring.record_event_duration_secs("/some/other/event", 5.0)
    assert clock.count == 3
    # Opened at 0; the first compilation (1, 2); the threads' (3 or 4, 5 or 6), both started before either ended,
    # whose union is 3 ticks (their sum: 4). In all 4: not the spans' sum (5), JAX's durations (1,000.1 s) nor 5 s.
    assert clock.seconds == 4
    two_spans = timing.CompileClock()
    two_spans._spans = [(0.0, 2.0), (1.0, 3.0), (5.0, 5.5)]
    assert two_spans.seconds == 3.5
    # Within a window: the union's part inside it (0.5 of the overlapping pair, 0.25 of the last span).
    assert two_spans.seconds_within(2.5, 5.25) == 0.75 and two_spans.seconds_within(3.0, 5.0) == 0.0
    phases = timing.Phases(two_spans)
    phases._spans = {"setup": [(-1.0, 0.5), (2.5, 4.0)], "training": [(4.0, 6.0)]}
    assert phases.compilation_by_phase() == {"setup": 1.0, "training": 0.5}


def test_the_start_up_is_the_process_age_at_the_first_run_only():
    # A child that sleeps 0.3 s before asking: its age covers the sleep and its own start-up, and no more.
    code = (
        "import time; time.sleep(0.3); from fmnist_jax import timing; "
        "print(timing.start_up(), timing.start_up(), timing.process_age())"
    )
    before = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    elapsed = time.perf_counter() - before
    age, again, later = float(out[0]), out[1], float(out[2])
    assert 0.3 <= age <= later <= elapsed + 0.02  # /proc's clock ticks are 10 ms
    assert again == "None"  # the start-up is the first run's alone


def test_phases_add_up_in_the_order_they_began(monkeypatch):
    clock = iter([10.0, 10.02, 11.0, 11.5, 12.0, 12.1])  # each phase's start and end, on a stand-in clock
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    phases = timing.Phases(before_run=1.5, restore=None)  # an unknown phase (None) is left out
    with phases("data"):
        pass
    with phases("training"):
        pass
    with phases("data"):  # entered again: adds up
        pass
    assert phases.seconds == {"before_run": 1.5, "data": pytest.approx(0.12), "training": pytest.approx(0.5)}
    assert phases.line() == "before run 1.5, data 0.1, training 0.5 (s; in all 2.1 s)"


def test_a_compile_clocks_record_and_line_count_its_programs_and_their_seconds(monkeypatch):
    """results.json's "seconds" and the log line: the phases, the compilations' seconds and their count; a
    compilation already under way when the clock opened counts from the opening."""
    event = timing.COMPILE_EVENT
    readings = iter([10.0, 12.5, 13.0, 14.0, 20.0, 20.5])  # opened; a duration; a phase's start, a start, its end...
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: next(readings)))
    clock = timing.CompileClock()  # opened at 10.0
    clock.on_duration(event, 99.0)  # began before the opening: (10.0, 12.5)
    phases = timing.Phases(clock)
    with phases("compile"):  # (13.0, 20.5), holding the compilation (14.0, 20.0)
        clock.on_scalar(event, 0.0)
        clock.on_duration(event, 99.0)
    assert clock.count == 2 and clock.seconds == 8.5
    assert phases.record() == {
        "phases": {"compile": 7.5},
        "compilation": 8.5,
        "compilations": 2,
        "compilation_by_phase": {"compile": 6.0},
    }
    assert phases.line() == "compile 7.5 (s; in all 7.5 s); XLA compiled 2 programs in 8.5 s of it"
