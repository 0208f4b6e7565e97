r"""The study's fingerprints by CPU kind, its reference loss curves, and the command that records a new kind.

    python tests/fingerprints.py          # prints this machine's CPU kind and whether it has a recording
    python tests/fingerprints.py record   # runs the two recorded runs here and adds this kind to fingerprints.json

XLA:CPU generates different code for different processors, so the exact bits of a seeded run are recorded per
CPU kind (the model, its newest instruction set and any cap on XLA:CPU's, and the usable CPUs, whose count splits its
sums: `fmnist_jax.machine.cpu_kind`) and jax version.
Two runs are recorded: `tiny` (the study's config on the generated tiny data set for 2 epochs: the
`cnn_config` fixture) and `real` (the study's config on the real data for one epoch of 2,560 images, through
main.py). Each kind keeps its loss curves too; `loss_curves` names the kind whose curves every CPU kind is
checked against (within the tolerances of the tests, which say how they were measured).
Record a new kind from a commit whose fingerprints match on a kind already recorded (the study's run must
not have changed): `git log -- tests/fingerprints.json` names the commits that recorded each.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import sys
import tempfile

import helpers
from helpers import REAL_DATA_DIR, ROOT, check, run_main, write_idx_dataset

RECORDINGS = ROOT / "tests" / "fingerprints.json"
REAL_ARGS = ("--config=configs/cnn.py", "--config.num_epochs=1", "--config.data.num_train=2560")


def kind() -> str:
    """This machine's key in the recordings: the CPU kind and the jax version."""
    import jax

    from fmnist_jax import machine

    return f"{machine.cpu_kind()} | jax {jax.__version__}"


def load() -> dict:
    return json.loads(RECORDINGS.read_text(encoding="utf-8"))


def recorded(run: str) -> str | None:
    """The recorded params_sha256 of `run` ("tiny" or "real") on this CPU kind, None where there is none."""
    return load()["kinds"].get(kind(), {}).get(run)


def tiny_data(folder: pathlib.Path) -> pathlib.Path:
    """The tiny data set the `tiny` run trains on (the same bytes as the session fixture's)."""
    return write_idx_dataset(folder, n_train=320, n_test=100)


def tiny_config(data_dir: pathlib.Path):
    """The CNN config on the tiny data: 64 validation, 256 training images (4 steps/epoch), 2 epochs."""
    return helpers.tiny_config(data_dir)


def losses(history: list[dict]) -> dict[str, list[float]]:
    """The loss curves a recording keeps: per epoch, the training and the validation loss."""
    return {k: [r[k] for r in history] for k in ("train_loss", "validation_loss")}


def _record() -> None:
    from fmnist_jax import metrics, run

    with tempfile.TemporaryDirectory() as folder:
        tmp = pathlib.Path(folder)
        tiny = run.run(tiny_config(tiny_data(tmp / "data")), tmp / "tiny")
        tiny_losses = losses(metrics.read_history(tmp / "tiny"))
        check(run_main(*REAL_ARGS, f"--workdir={tmp / 'real'}", f"--config.data.dir={REAL_DATA_DIR}"))
        real = metrics.load_results(tmp / "real")
        real_losses = losses(metrics.read_history(tmp / "real"))
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True, cwd=ROOT, check=False).stdout
    recordings = load()
    recordings["kinds"][kind()] = {
        "tiny": tiny["params_sha256"],
        "real": real["params_sha256"],
        "recorded": f"{datetime.date.today()} at commit {commit.strip()}",
        "tiny_losses": tiny_losses,
        "real_losses": real_losses,
    }
    RECORDINGS.write_text(json.dumps(recordings, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"kind": kind(), **recordings["kinds"][kind()]}, indent=2))


if __name__ == "__main__":
    if sys.argv[1:] == ["record"]:
        _record()
    elif sys.argv[1:]:
        raise SystemExit("usage: python tests/fingerprints.py [record]")
    else:
        tiny, real = recorded("tiny"), recorded("real")
        print(json.dumps({"kind": kind(), "recorded": bool(tiny and real), "tiny": tiny, "real": real}, indent=2))
