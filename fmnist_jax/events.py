"""TensorBoard event files for a CNN run, written with tensorboardX (numpy and protobuf only, no TensorFlow).

Events go to WORKDIR/tensorboard/ and follow the history's rule: they describe the run that produced the final
parameters. A run that restores step S first rewrites the event files it finds without the events past S (events
at S itself, such as the restored epoch's scalars, belong to its lineage; a finished run's test scores and
hyper-parameters do not: it is scored again), so every reader, TensorBoard's fast Rust loader included, shows each
step once; its own file starts with a purge marker at S + 1, which TensorBoard's Python reader honours. Every scalar
is logged at a global step. Events are written in the training thread and flushed at each epoch's end, so what a
crash loses is only what the restored state has not reached.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import struct
import time
from typing import Any

import jax
import numpy as np
from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

from fmnist_jax import config_lib, files

EVENTS_DIR = config_lib.EVENTS_DIR
HPARAMS_RUN = "hparams"
FINAL_TAGS = ("test/",)  # written once the run is scored (`EventWriter.finish`)

# A copy of the epoch's running loss sum, kept when a point is due (the next train call donates the state). A jitted
# program, so the training loop can compile it with the run's other programs, before its epochs begin.
copy_point = jax.jit(jax.numpy.copy)


def _records(path: pathlib.Path) -> list[bytes]:
    """The framed records of a TFRecord file (length, its CRC, data, its CRC), each as its raw bytes."""
    content, records, at = path.read_bytes(), [], 0
    while at + 12 <= len(content):
        (length,) = struct.unpack("<Q", content[at : at + 8])
        end = at + 12 + length + 4
        if end > len(content):  # a torn last record (the process was killed while writing it)
            break
        records.append(content[at:end])
        at = end
    return records


def rewind(workdir: pathlib.Path, restored_step: int) -> None:
    """Takes WORKDIR's events back to a resumed run's restored step (where there are any): its final scores and
    hyper-parameters come again when it finishes; the points past the step, from the run that died, go."""
    directory = pathlib.Path(workdir) / EVENTS_DIR
    if directory.exists():
        shutil.rmtree(directory / HPARAMS_RUN, ignore_errors=True)
        for temporary in directory.rglob(".*.tmp"):  # a rewrite a kill cut short (TensorBoard would read it)
            if temporary.is_file():
                temporary.unlink(missing_ok=True)
        prune(directory, restored_step)


def for_run(workdir: pathlib.Path, restored_step: int, tensorboard: Any) -> EventWriter | None:
    """A run's event writer from `restored_step` on (`config.tensorboard`), or None with TensorBoard off: the events
    of an earlier start are taken back to the step all the same (they follow the history)."""
    if not tensorboard.enabled:
        rewind(workdir, restored_step)
        return None
    return EventWriter(workdir, restored_step=restored_step, loss_every_steps=tensorboard.loss_every_steps)


def prune(directory: pathlib.Path, last_step: int, *, final: tuple[str, ...] = FINAL_TAGS) -> None:
    """Rewrites every event file under `directory` without the events whose step is past `last_step`, and without
    the scalars tagged `final*` (a finished run's test scores, written again when a resumed run finishes)."""
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        kept, changed = [], False
        for record in _records(path):
            event = event_pb2.Event.FromString(record[12:-4])
            past = event.step > last_step and (event.HasField("summary") or event.HasField("session_log"))
            if past or any(value.tag.startswith(final) for value in event.summary.value):
                changed = True
            else:
                kept.append(record)
        if changed or len(b"".join(kept)) != path.stat().st_size:
            files.atomic_write_bytes(path, b"".join(kept))


class _EventFile:
    """One event file written in this thread: once `flush` returns, its events are in the file (tensorboardX's
    SummaryWriter queues events for a background thread, and a killed process loses what is still queued)."""

    def __init__(self, directory: pathlib.Path, *, purge_step: int | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self._writer = EventsWriter(str(directory / "events"), f".{os.getpid()}")
        if purge_step is not None:  # TensorBoard's Python reader drops older events from this step on
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._write(event_pb2.Event(step=purge_step, session_log=start))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.summary(tb_summary.scalar(tag, float(value)), step)

    def summary(self, summary: Any, step: int = 0) -> None:
        self._write(event_pb2.Event(step=step, summary=summary))

    def _write(self, event: Any) -> None:
        event.wall_time = time.time()
        self._writer.write_event(event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class EventWriter:
    """Scalars per epoch, the train loss every `loss_every_steps` steps, the test accuracy and hyper-parameters.

    The train-loss points are the epoch's running mean loss (its sum is in the train state, so a resumed run
    logs the same values). Their device values are copied when due and read at the end of the epoch, where the
    loop waits for the devices anyway: logging them never stalls the training loop.
    """

    def __init__(self, workdir: pathlib.Path, *, restored_step: int, loss_every_steps: int):
        self.directory = pathlib.Path(workdir) / EVENTS_DIR
        rewind(workdir, restored_step)
        self.writer = _EventFile(self.directory, purge_step=restored_step + 1)
        self.loss_every_steps = loss_every_steps
        self._last_point = restored_step
        self._pending: list[tuple[int, int, jax.Array]] = []  # (step, images in the epoch so far, loss sum copy)

    def steps_done(self, step: int, images_in_epoch: int, loss_sum: jax.Array) -> None:
        """After a train call ending at `step`: once a multiple of `loss_every_steps` has been passed, keeps a
        copy of the epoch's running loss sum (an asynchronous device op) for the next `flush`."""
        every = self.loss_every_steps
        if every and step // every != self._last_point // every:
            self._pending.append((step, images_in_epoch, copy_point(loss_sum)))
            self._last_point = step

    def flush(self, *, up_to: int | None = None) -> None:
        """Writes the pending train-loss points (up to step `up_to`, where given), waiting for their values: the
        later ones stay pending, so that the host never waits for steps past the one it is logging."""
        due = [point for point in self._pending if up_to is None or point[0] <= up_to]
        self._pending = self._pending[len(due) :]
        for step, images, loss_sum in due:
            value = float(np.asarray(loss_sum.addressable_data(0)))
            self.writer.scalar("train/loss_running", value / images, step)
        self.writer.flush()

    def epoch(self, record: dict[str, Any], *, learning_rate: float) -> None:
        """One history.jsonl record's scalars at its global step."""
        step = record["step"]
        for key in ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy"):
            split, metric = key.split("_", 1)
            if record[key] is not None:  # no validation split: no validation curve
                self.writer.scalar(f"{split}/{metric}", record[key], step)
        self.writer.scalar("epoch/learning_rate", learning_rate, step)
        self.writer.scalar("epoch/images_per_second", record["images_per_second"], step)
        self.writer.scalar("epoch/seconds", record["seconds"], step)
        self.writer.scalar("epoch/number", record["epoch"], step)
        self.flush(up_to=step)

    def finish(self, results: dict[str, Any], config_dict: dict[str, Any], *, step: int) -> None:
        """The test accuracy at the last step, and the run's hyper-parameters for TensorBoard's hparams view."""
        self.writer.scalar("test/accuracy", results["test_accuracy"], step)
        self.writer.scalar("test/loss", results["test_loss"], step)
        hparams = {k: v for k, v in config_lib.flatten(config_dict).items() if isinstance(v, (int, float, str, bool))}
        metrics = {"hparam/test_accuracy": results["test_accuracy"]}
        if results["validation_accuracy"] is not None:  # none when trained on all 60k images
            metrics["hparam/validation_accuracy"] = results["validation_accuracy"]
        run = _EventFile(self.directory / HPARAMS_RUN)  # TensorBoard's HPARAMS tab reads a run of its own
        for part in tb_summary.hparams(hparams, metrics):
            run.summary(part)
        for tag, value in metrics.items():
            run.scalar(tag, value, step)
        run.close()
        self.flush()

    def close(self) -> None:
        self.flush()
        self.writer.close()
