"""The study's run is a fixed point: a change that leaves its maths alone leaves its parameters' bits alone.

The fingerprints are recorded per CPU kind (its usable CPUs included) and jax version (tests/fingerprints.py, which
also records a new kind). On a kind without a recording the bit-exact test skips and says so; what holds on every CPU
is still checked: the same seeded run twice gives the same bits, and its loss curve follows the recorded one within
DRIFT_LOSS_RTOL (tests/helpers.py).
"""

import fingerprints
import numpy as np
import pytest
from helpers import DRIFT_LOSS_RTOL

from fmnist_jax import metrics, run


@pytest.fixture(scope="module")
def two_tiny_runs(tiny_data, finished_tiny_run, tmp_path_factory):
    """The study's tiny run, twice, each from scratch in this process: (results, history, workdir) of each. The
    first is trained here with the recorded config (`fingerprints.tiny_config`, a checkpoint per epoch); the
    second is the session's finished tiny run (tests/conftest.py), the same config with a checkpoint every 2 steps,
    which makes the same 2-step train calls."""
    workdir = tmp_path_factory.mktemp("first")
    first = (run.run(fingerprints.tiny_config(tiny_data), workdir), metrics.read_history(workdir), workdir)
    second = (metrics.load_results(finished_tiny_run), metrics.read_history(finished_tiny_run), finished_tiny_run)
    return [first, second]


def test_the_study_run_on_tiny_data_keeps_its_recorded_fingerprint(two_tiny_runs):
    expected = fingerprints.recorded("tiny")
    if expected is None:
        pytest.skip(f"no study fingerprint recorded for {fingerprints.kind()!r}: `python tests/fingerprints.py record`")
    assert two_tiny_runs[0][0]["params_sha256"] == expected


def test_the_same_seeded_run_twice_gives_the_same_bits(two_tiny_runs):
    (first, first_history, first_dir), (second, second_history, second_dir) = two_tiny_runs
    assert first["params_sha256"] == second["params_sha256"]
    assert first_history == [
        {**r, "seconds": a["seconds"], "images_per_second": a["images_per_second"]}
        for r, a in zip(second_history, first_history, strict=True)
    ]
    np.testing.assert_array_equal(
        metrics.load_predictions(first_dir)["probs"], metrics.load_predictions(second_dir)["probs"]
    )


def test_the_study_run_follows_the_recorded_loss_curve(two_tiny_runs):
    reference = fingerprints.load()["loss_curves"]["tiny"]
    got = fingerprints.losses(two_tiny_runs[0][1])
    assert set(reference) == set(got) and all(len(reference[k]) == 2 for k in reference)
    for key, curve in reference.items():
        np.testing.assert_allclose(got[key], curve, rtol=DRIFT_LOSS_RTOL, err_msg=key)


# The real-data fingerprint and loss curve are checked through main.py by tests/test_integration.py.
