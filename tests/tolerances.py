"""How close each tolerance came to failing: `pytest --tolerance-report=FILE` records, for every
`np.testing.assert_allclose` and `pytest.approx` comparison that passes, the share of its tolerance it used
(the largest |actual - desired| / (atol + rtol * |desired|) over the elements: 0 exact, 1 at the limit), one JSON
line per comparison (per element of an approx over a container), with its test, its line in the test files, its
err_msg and the machine's CPU kind; a bound a test states in its own terms (a norm's relative error, a count of
images) does the same through `assert_within`. FILE is written afresh by each run.

    python tests/tolerances.py FILE [FILE ...]

prints each comparison's largest share per file (one file per machine or instruction set; a run under
XLA_FLAGS=--xla_cpu_max_isa=AVX2 is a second one on the same CPU), the least headroom first. A tolerance is either
derived from what it bounds (a rounding, carried through) or set from such runs on more than one instruction set,
with its margin; never tuned until one machine passes."""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
import sys

import numpy as np
import pytest

_ACTIVE: list = []  # the recorder while a report is being written (configure), else empty


def assert_within(value: float, bound: float, err_msg: str = "") -> None:
    """Asserts `value <= bound` for a non-negative measure of a difference (a relative error, a count of images
    that changed class); with --tolerance-report, records value / bound as the share of the tolerance used."""
    __tracebackhide__ = True
    value, bound = float(value), float(bound)
    assert value <= bound, f"{err_msg or 'the difference'}: {value:.4g} is over its bound {bound:.4g}"
    if _ACTIVE:
        _ACTIVE[0](value / bound if bound > 0 else 0.0, f"bound={bound:g}", err_msg)


def add_option(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tolerance-report",
        metavar="FILE",
        help="write one JSON line per passing assert_allclose/approx: the share of its tolerance it used",
    )


def configure(config: pytest.Config) -> None:
    """Wraps the two comparisons for the whole run (each xdist worker configures itself) when the option is set;
    each process appends its lines when it ends, to the file the first process emptied."""
    if not (option := config.getoption("tolerance_report")):
        return
    from fmnist_jax import machine

    path = pathlib.Path(config.invocation_params.dir, option).resolve()
    if not hasattr(config, "workerinput"):  # the run's first process (xdist's controller, or the only one)
        path.write_text("")
    lines: list[str] = []
    record = _recorder(lines, machine.cpu_kind(), config.rootpath)
    _ACTIVE[:] = [record]
    original = np.testing.assert_allclose

    def assert_allclose(actual, desired, rtol=1e-7, atol=0, equal_nan=True, err_msg="", *args, **kwargs):
        __tracebackhide__ = True
        original(actual, desired, rtol, atol, equal_nan, err_msg, *args, **kwargs)
        a, d = np.broadcast_arrays(np.asarray(actual, np.float64), np.asarray(desired, np.float64))
        bound, error = atol + rtol * np.abs(d), np.abs(a - d)
        used = np.where(bound > 0, error / np.where(bound > 0, bound, 1), 0.0)  # passed: a zero bound met exactly
        record(float(np.max(used[np.isfinite(used)], initial=0.0)), f"rtol={_g(rtol)} atol={_g(atol)}", err_msg)

    approx_scalar = type(pytest.approx(1.0))
    compare = approx_scalar.__eq__

    def eq(self, actual):
        __tracebackhide__ = True
        equal = compare(self, actual)
        if equal and all(
            isinstance(x, numbers.Real) and not isinstance(x, bool | np.bool_) for x in (self.expected, actual)
        ):
            tolerance = float(self.tolerance)
            used = abs(float(actual) - float(self.expected)) / tolerance if tolerance > 0 else math.nan
            if math.isfinite(used):  # two equal infinities, or a zero tolerance met exactly: nothing to say
                record(used, f"rel={self.rel} abs={self.abs}", "")
        return equal

    def restore() -> None:
        np.testing.assert_allclose, approx_scalar.__eq__ = original, compare
        _ACTIVE.clear()
        with path.open("a") as f:  # one append per process, when it ends
            f.write("".join(lines))

    np.testing.assert_allclose, approx_scalar.__eq__ = assert_allclose, eq
    config.add_cleanup(restore)


def _g(tolerance) -> str:
    """A tolerance as given: a number, or an array's largest element."""
    return f"{float(np.max(tolerance)):g}" + (" (largest)" if np.ndim(tolerance) else "")


def _ours(filename: str, root: pathlib.Path) -> bool:
    """A file of the project's (a test, its helpers), not a library's nor this one's."""
    path = pathlib.Path(filename)
    return path.is_relative_to(root) and "site-packages" not in path.parts and path != pathlib.Path(__file__)


def _recorder(lines: list[str], kind: str, root: pathlib.Path):
    def record(used: float, tolerance: str, err_msg: str) -> None:
        frame = sys._getframe(2)
        while frame is not None and not _ours(frame.f_code.co_filename, root):
            frame = frame.f_back
        if frame is None:  # a comparison a library makes: not one of ours
            return
        line = {
            "site": f"{pathlib.Path(frame.f_code.co_filename).relative_to(root)}:{frame.f_lineno}",
            "err_msg": str(err_msg),
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
            "used": used,
            "tolerance": tolerance,
            "cpu_kind": kind,
        }
        lines.append(json.dumps(line) + "\n")

    return record


def summary(files: list[pathlib.Path]) -> list[str]:
    """One row per comparison (its line, and its err_msg where it has one): the largest share used in each file,
    and the tolerance that share is of."""
    names = [file.name for file in files]
    if len(set(names)) < len(names):  # report.jsonl from two folders: name them by their paths
        names = [str(file) for file in files]
    worst: dict[str, dict[str, tuple[float, str]]] = {}
    for file, name in zip(files, names, strict=True):
        for text in file.read_text().splitlines():
            line = json.loads(text)
            key = f"{line['site']} {line['err_msg']}".strip()
            by_file = worst.setdefault(key, {})
            if name not in by_file or line["used"] > by_file[name][0]:
                by_file[name] = (line["used"], line["tolerance"])
    order = sorted(worst, key=lambda key: -max(used for used, _ in worst[key].values()))
    rows = ["comparison | tolerance | " + " | ".join(names)]
    for key in order:
        shares = " | ".join(f"{worst[key][n][0]:.2g}" if n in worst[key] else "-" for n in names)
        _, tolerance = max(worst[key].values())
        rows.append(f"{key} | {tolerance} | {shares}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n".join(summary([pathlib.Path(p) for p in sys.argv[1:]])))
