"""`pytest --tolerance-report`: the share of each tolerance a passing comparison used, and the summary by line."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tolerances
from helpers import quotient_error, rounded, subprocess_env

TESTS = pathlib.Path(__file__).resolve().parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import tolerances

def pytest_addoption(parser):
    tolerances.add_option(parser)

def pytest_configure(config):
    tolerances.configure(config)
"""

TESTS_FILE = """
import numpy as np
import pytest
import tolerances

def test_close():
    np.testing.assert_allclose([1.0, 2.05], [1.0, 2.0], rtol=0.05)  # 0.05 of 0.1 allowed
    np.testing.assert_allclose(3.0, 3.0, rtol=0, atol=0, err_msg="exact")  # nothing used
    assert 2.0 == pytest.approx(2.1, abs=0.2)  # 0.1 of 0.2
    assert {"a": 1.0, "b": 5.0} == pytest.approx({"a": 1.0, "b": 5.1}, rel=0.1)  # 0.1 of 0.51
    assert 1.0 == pytest.approx(np.float32(0.75), rel=0.5)  # a NumPy scalar expected: 0.25 of 0.375
    assert float("inf") == pytest.approx(float("inf"), abs=1)  # equal infinities: no share to speak of
    tolerances.assert_within(0.3, 1.2, "norm")  # a bound in the test's own terms: 0.25 of it

def test_outside():
    np.testing.assert_allclose(1.3, 1.0, atol=0.1)

def test_over_its_own_bound():
    tolerances.assert_within(2, 1, "images that changed class")
"""


def test_report_records_the_share_used_of_passing_comparisons(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_numbers.py").write_text(TESTS_FILE)
    report = tmp_path / "report.jsonl"
    report.write_text('{"site": "an earlier run\'s line"}\n')  # each run writes the file afresh
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tolerance-report=report.jsonl"],
        check=False,  # one of its tests fails on purpose
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert "2 failed, 1 passed" in done.stdout, done.stdout + done.stderr  # the wrapper still fails what fails
    assert "tolerances.py" not in done.stdout  # the failure's traceback shows the test, not the wrapper
    assert "images that changed class: 2 is over its bound 1" in done.stdout
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    sites = [f"test_numbers.py:{n}" for n in (7, 8, 9, 10, 10, 11, 13)]  # a mapping's values each; no failure
    assert [line["site"] for line in lines] == sites  # nor an infinity
    used = [0.5, 0.0, 0.5, 0.0, 0.1 / 0.51, 0.25 / 0.375, 0.25]
    assert [line["used"] for line in lines] == pytest.approx(used, rel=1e-6)
    assert [line["err_msg"] for line in lines] == ["", "exact", "", "", "", "", "norm"]
    assert {line["test"] for line in lines} == {"test_numbers.py::test_close"}
    assert lines[0]["tolerance"] == "rtol=0.05 atol=0" and lines[2]["tolerance"] == "rel=None abs=0.2"
    assert lines[-1]["tolerance"] == "bound=1.2"
    assert lines[0]["cpu_kind"]


def test_summary_orders_comparisons_by_least_headroom(tmp_path):
    def write(path, rows):
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"err_msg": "", "cpu_kind": "k", **r}) + "\n" for r in rows))
        return path

    loose, tight = "rtol=0.001 atol=0", "rtol=1e-05 atol=0"
    avx512 = write(
        tmp_path / "avx512.jsonl",
        [
            {"site": "a.py:1", "used": 0.01, "tolerance": loose},
            {"site": "a.py:1", "used": 0.2, "tolerance": tight},  # the same line, another bound: the largest's shown
            {"site": "a.py:1", "used": 0.3, "tolerance": tight, "err_msg": "shift"},
        ],
    )
    avx2 = write(
        tmp_path / "avx2.jsonl",
        [
            {"site": "a.py:1", "used": 0.05, "tolerance": tight},
            {"site": "b.py:9", "used": 0.7, "tolerance": loose},
        ],
    )
    assert tolerances.summary([avx512, avx2]) == [
        "comparison | tolerance | avx512.jsonl | avx2.jsonl",
        f"b.py:9 | {loose} | - | 0.7",
        f"a.py:1 shift | {tight} | 0.3 | -",
        f"a.py:1 | {tight} | 0.2 | 0.05",
    ]
    again = write(tmp_path / "xeon" / "avx2.jsonl", [{"site": "b.py:9", "used": 0.1, "tolerance": loose}])
    assert tolerances.summary([avx2, again])[:2] == [  # two files of one name: their paths name the columns
        f"comparison | tolerance | {avx2} | {again}",
        f"b.py:9 | {loose} | 0.7 | 0.1",
    ]


def test_quotient_error_is_the_worst_case_of_its_inputs_rounding():
    rng = np.random.default_rng(0)
    for a, b, da, db in [(3.0, 1.5, 0.005, 0.005), (0.12, 0.031, 0.0005, 0.0005), (-2.0, 0.4, 0.05, 0.01)]:
        bound = quotient_error(a, b, da, db)
        corners = [abs((a + sa * da) / (b + sb * db) - a / b) for sa in (-1, 1) for sb in (-1, 1)]
        assert bound == pytest.approx(max(corners), rel=1e-12)  # reached at a corner of the box
        inside = (a + rng.uniform(-da, da, 10_000)) / (b + rng.uniform(-db, db, 10_000))
        assert np.abs(inside - a / b).max() <= bound
    assert rounded(2) == pytest.approx(0.005) and round(0.1234999, 2) == pytest.approx(0.12, abs=rounded(2))
    with pytest.raises(AssertionError, match=r"within 0\.01 of zero"):
        quotient_error(1.0, 0.005, 0.0, 0.01)
