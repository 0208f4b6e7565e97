"""Stop signals: SIGTERM (a scheduler's preemption), SIGINT (Ctrl-C) and SIGHUP (a closed terminal) end a run at
its next safe point, with what it trained saved, instead of at once (`PreemptionGuard`); a baseline, which has no
safe point, at once, saying so (`at_once`)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from absl import logging


class PreemptionGuard:
    """Within `with` (or until `release`), SIGTERM, SIGINT and SIGHUP (a closed terminal or SSH session), each left
    ignored where it is (as SIGHUP under nohup), only set `.signal`: the loop stops at its next safe point, saving what
    was trained. A second SIGTERM or SIGINT acts as usual (a second Ctrl-C raises KeyboardInterrupt); a SIGHUP after any
    of them is ignored until `release`: a terminal that hangs up sends two (its shell passes one on, the kernel sends
    another), and one closed during the save should not end it. A signal that `heard` never reported is not lost:
    `release` raises it again under the handlers it puts back, as if it had come just after."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._acted_on = False  # `heard` reported a signal: the run is stopping for it

    def _handle(self, signum, frame):
        logging.warning(
            "%s received: stopping at the next safe point, with what was trained saved (a second SIGTERM or Ctrl-C "
            "acts as usual).",
            signal.Signals(signum).name,
        )
        if self.signal is None:
            self.signal = signum
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if s == signal.SIGHUP else handler)
        if signal.SIGHUP in previous:
            self._previous = {signal.SIGHUP: previous[signal.SIGHUP]}  # put back by `release`

    def __enter__(self) -> PreemptionGuard:
        try:
            # Not a signal ignored (SIGHUP under nohup, SIGINT in a job a script started with `&`: a Ctrl-C meant for
            # the script), nor SIGHUP where C code handles it (a handler Python cannot put back).
            before = {s: signal.getsignal(s) for s in self.SIGNALS}
            caught = [s for s, h in before.items() if h != signal.SIG_IGN and (h is not None or s != signal.SIGHUP)]
            self._previous = {s: signal.signal(s, self._handle) for s in caught}
        except ValueError:  # not the main thread: signals cannot be caught here
            self._previous = {}
        return self

    def heard(self) -> int | None:
        """The signal this process or any other of the job caught: the same answer on every process, each of which
        must ask at the same point of the run (one all-gather; in a one-process job, `.signal`). A process that
        stopped alone would leave the others waiting for it in their next collective."""
        from fmnist_jax import parallel  # JAX's: not imported where `at_once` alone is used (a baseline)

        heard = parallel.max_over_processes(self.signal or 0) or None
        self._acted_on = self._acted_on or heard is not None
        return heard

    def release(self, *, unheard: bool = True) -> None:
        """Puts the previous handlers back (once; `__exit__` calls it too). With `unheard`, a signal caught since the
        last `heard` (which the run has not stopped for) is then raised again: it acts as usual, as one that came a
        moment later would (a Ctrl-C raises KeyboardInterrupt, a SIGTERM's default ends the process)."""
        previous, self._previous = self._previous, {}  # taken first: a signal's handler may run in the loop below
        for s, handler in previous.items():
            signal.signal(s, handler)
        if unheard:
            self.raise_unheard()

    def raise_unheard(self) -> None:
        """Raises again, under the handlers in place now, a signal caught since the last `heard` that the run has not
        stopped for (once): after `release(unheard=False)`, under the handlers of what follows (`at_once`)."""
        if self.signal is not None and not self._acted_on:
            self._acted_on = True
            signal.raise_signal(self.signal)

    def __exit__(self, exc_type, *exc) -> None:
        self.release(unheard=exc_type is None)  # not over an error on its way out: it would hide it


def rerun_text(line: str) -> str:
    """`line`, then the command that started this process, to run again (quoted for a shell)."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    return f"{line}\n  {command}"


# Ctrl-C during `at_once`: raised as KeyboardInterrupt where Python code runs (its clean-up runs too), and where a C
# call holds the main thread (a fit) for this long after it, the process ends as a SIGTERM ends it.
CTRL_C_GRACE_SECONDS = 1.0
UNFINISHED = "before the run had finished"  # what a signal outside a guard cut short (a scoring, a prediction)
# The most the line may wait for a stderr nobody reads (a paused terminal, a stalled pipe) before the process ends.
LINE_SECONDS = 2.0
_AT_ONCE: dict[str, Any] = {}  # the handlers and pipe of the `at_once` under way: a forked child drops them


@contextlib.contextmanager
def at_once(what: str) -> Iterator[None]:
    """For work without a safe point to stop at (a baseline: scikit-learn's calls hold the main thread for minutes,
    and a Python handler runs only once they return): SIGTERM or SIGHUP ends the process at once, as its default
    would, but says so first on stderr: "interrupted (SIGTERM, `what`). Go on with the same command:" and the
    command; exit 128 + the signal. Ctrl-C raises KeyboardInterrupt as usual, or, where the main thread is still in C
    code CTRL_C_GRACE_SECONDS later, ends the process the same way. A thread does it, woken through
    `signal.set_wakeup_fd` while the main thread is in C code. Only a signal left at its default is taken (one
    ignored, as SIGHUP under nohup or Ctrl-C in a job a script started with `&`, or handled by the program that
    called, stays so). Outside the main thread, or where another wake-up fd is set (an event loop's), nothing
    changes; a process forked inside it starts without it."""
    main = threading.current_thread() is threading.main_thread()
    if (other := signal.set_wakeup_fd(-1) if main else -1) != -1:
        signal.set_wakeup_fd(other)  # left to it
    defaults = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) == signal.SIG_DFL]
    defaults += [signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else []
    taken = defaults if main and other == -1 else []
    if not taken:
        yield
        return
    ended, raised = threading.Lock(), threading.Event()
    closing, pending = [], []  # the tear-down under way (appending is one step), and a Ctrl-C held for after it

    def end(signum: int) -> None:
        if not ended.acquire(blocking=False):  # the thread and the handler both see the signal: the first ends it
            return
        code = 128 + signum
        try:
            threading.Timer(LINE_SECONDS, os._exit, args=(code,)).start()  # should the write below block
            line = rerun_text(f"interrupted ({signal.Signals(signum).name}, {what}). Go on with the same command:")
            with contextlib.suppress(OSError):  # (a closed terminal: nowhere to say it)
                os.write(2, (line + "\n").encode(errors="backslashreplace"))
        finally:
            os._exit(code)

    def handle(signum: int, frame: Any) -> None:  # in the main thread, between two bytecodes: Python code runs
        if signum != signal.SIGINT:
            end(signum)
        elif closing:
            pending.append(signum)  # raised once all is put back: the tear-down itself is never cut short
        else:
            raised.set()
            raise KeyboardInterrupt

    def watch() -> None:
        while data := os.read(read, 64):  # a byte per signal caught, its number; none: the `with` is over
            for signum in data:
                if signum not in taken or (signum == signal.SIGINT and closing):
                    continue
                if signum == signal.SIGINT and raised.wait(CTRL_C_GRACE_SECONDS):
                    raised.clear()  # the main thread took it up; a later Ctrl-C is watched for again
                    continue
                end(signum)

    read = write = watcher = None
    previous = {}
    try:
        read, write = os.pipe()
        os.set_blocking(write, False)
        for s in taken:
            previous[s] = signal.signal(s, handle)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        _AT_ONCE.update(previous=previous, fds=(read, write))
        watcher = threading.Thread(target=watch, name="at_once", daemon=True)
        watcher.start()
        yield
    finally:
        closing.append(True)
        _AT_ONCE.clear()
        for s, handler in previous.items():  # put back before the wake-up fd goes: a signal now is theirs
            signal.signal(s, handler)
        signal.set_wakeup_fd(-1)
        if write is not None:
            os.close(write)
        if watcher is not None:
            watcher.join()
        if read is not None:
            os.close(read)
        for s in pending[:1]:
            signal.raise_signal(s)  # a Ctrl-C during the tear-down: KeyboardInterrupt, now


def _drop_at_once_in_a_child() -> None:
    """In a process forked inside `at_once`: its wake-up fd and handlers are the parent's (a signal to the child would
    wake the parent's thread and end the parent): the child goes without them."""
    if at := dict(_AT_ONCE):
        _AT_ONCE.clear()
        with contextlib.suppress(ValueError):  # (forked from another thread than the main one)
            signal.set_wakeup_fd(-1)
        for s, handler in at["previous"].items():
            with contextlib.suppress(ValueError):
                signal.signal(s, handler)
        for fd in at["fds"]:
            with contextlib.suppress(OSError):
                os.close(fd)


os.register_at_fork(after_in_child=_drop_at_once_in_a_child)
