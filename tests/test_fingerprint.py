"""The study's run is a fixed point: a change that leaves its maths alone leaves its parameters' bits alone.

The fingerprints were recorded from the code before any optional training feature existed. XLA's CPU kernels
differ between processors and JAX versions, so each recording names both; on another pair the test says so and
skips (record the pair's fingerprints from a checkout of the recording commit, 54dcc20, with these tests).
"""

import jax
import pytest

from fmnist_jax import run


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


# (CPU model, jax version) -> params_sha256 of: the cnn_config fixture's run (tiny data, 2 epochs), and the
# study's config on the real data for one epoch of 2,560 images.
TINY = {("AMD EPYC", "0.10.2"): "2395db8baf487d1da2ce76bb4be80a9f59c0a363661043d2eff8bfcf87850abc"}
REAL = {("AMD EPYC", "0.10.2"): "d56bbe7172029fbdf82fc387c2e3923d71f0eec0753c9e836eab955e0ed9af1a"}


def recorded(table: dict) -> str:
    key = (cpu_model(), jax.__version__)
    if key not in table:
        pytest.skip(f"no study fingerprint recorded for CPU {key[0]!r} with jax {key[1]}")
    return table[key]


def test_the_study_run_on_tiny_data_keeps_its_recorded_fingerprint(cnn_config, tmp_path):
    expected = recorded(TINY)
    assert run.run(cnn_config, tmp_path)["params_sha256"] == expected


# The real-data fingerprint is checked through main.py by tests/test_integration.py.
