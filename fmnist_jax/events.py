"""TensorBoard event files for a CNN run, written with tensorboardX (numpy and protobuf only, no TensorFlow).

Events go to WORKDIR/tensorboard/ and follow the history's rule: they describe the run that produced the final
parameters. A run that restores step S opens its event file with `purge_step=S + 1`, so TensorBoard's reader
hides every event a crashed earlier run wrote after the restored state (events at step S itself, such as the
restored epoch's scalars, are part of its lineage and stay). Every scalar is logged at a global step.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

from fmnist_jax import config_lib

EVENTS_DIR = "tensorboard"
HPARAMS_RUN = "hparams"


class EventWriter:
    """Scalars per epoch, the train loss every `loss_every_steps` steps, the test accuracy and hyper-parameters."""

    def __init__(self, workdir: pathlib.Path, *, restored_step: int, epoch_start_step: int, loss_every_steps: int):
        from tensorboardX import SummaryWriter

        self.directory = pathlib.Path(workdir) / EVENTS_DIR
        self.writer = SummaryWriter(logdir=str(self.directory), purge_step=restored_step + 1, flush_secs=30)
        self.loss_every_steps = loss_every_steps
        self._last_point = restored_step
        self._mark = (epoch_start_step, 0.0)  # (step, the epoch's running loss sum then) of the last point

    def steps_done(self, step: int, batch_size: int, read_loss_sum: Callable[[], float]) -> None:
        """After a train call ending at `step`: once a multiple of `loss_every_steps` has been passed, logs the
        mean train loss since the last point of this epoch. `read_loss_sum` returns the epoch's running loss sum;
        it waits for the devices, so it is called only when a point is due."""
        every = self.loss_every_steps
        if not every or step // every == self._last_point // every:
            return
        loss_sum = read_loss_sum()
        mark_step, mark_sum = self._mark
        self.writer.add_scalar("train/loss_steps", (loss_sum - mark_sum) / ((step - mark_step) * batch_size), step)
        self._mark, self._last_point = (step, loss_sum), step

    def epoch(self, record: dict[str, Any], *, learning_rate: float) -> None:
        """One history.jsonl record's scalars at its global step."""
        step = record["step"]
        for key in ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy"):
            split, metric = key.split("_", 1)
            self.writer.add_scalar(f"{split}/{metric}", record[key], step)
        self.writer.add_scalar("epoch/learning_rate", learning_rate, step)
        self.writer.add_scalar("epoch/images_per_second", record["images_per_second"], step)
        self.writer.add_scalar("epoch/seconds", record["seconds"], step)
        self.writer.add_scalar("epoch/number", record["epoch"], step)
        self._mark = (step, 0.0)  # the running sums restart with the next epoch
        self.writer.flush()

    def finish(self, results: dict[str, Any], config_dict: dict[str, Any], *, step: int) -> None:
        """The test accuracy at the last step, and the run's hyper-parameters for TensorBoard's hparams view."""
        self.writer.add_scalar("test/accuracy", results["test_accuracy"], step)
        self.writer.add_scalar("test/loss", results["test_loss"], step)
        hparams = {k: v for k, v in config_lib.flatten(config_dict).items() if isinstance(v, (int, float, str, bool))}
        self.writer.add_hparams(
            hparams,
            {
                "hparam/test_accuracy": results["test_accuracy"],
                "hparam/validation_accuracy": results["validation_accuracy"],
            },
            name=HPARAMS_RUN,
            global_step=step,
        )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
