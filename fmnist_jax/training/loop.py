"""`train_and_evaluate`: set a run up, resume it from its newest checkpoint, train it epoch by epoch, score it.

Every program the run needs is compiled before its training starts (the phase "compile"). Each jitted call runs up
to `config.steps_per_call` steps (`chunks`), never crossing an epoch's end or a checkpoint (a boundary). At a
boundary the host dispatches the epoch's sums, its validation and a copy of the state to save; with host overlap
(`config.host_overlap`, on for one-process GPU/TPU runs) it reads them, logs, writes the history and saves only
once the calls up to the next boundary are queued, so a fast device never waits for that work; without, at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from fmnist_jax import checkpoints, config_lib, errors, events, files, logs, metrics, parallel, preemption, timing
from fmnist_jax.errors import TrainingError
from fmnist_jax.training.evaluate import PendingScores
from fmnist_jax.training.plan import Plan, check_data, check_devices, chunks, load_data, make_plan
from fmnist_jax.training.state import TrainState
from fmnist_jax.training.step import CallQueue, TrainInputs


def _progress(total: int, initial: int, desc: str, *, hide: bool = False):
    from tqdm import auto as tqdm

    return tqdm.tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        leave=False,
        file=sys.stderr,
        disable=hide or not files.is_lead_process(),
        mininterval=logs.progress_seconds(),
    )


class EpochProgress:
    """The bookkeeping of the epoch under way: its index, first step and progress bar."""

    def __init__(self, plan: Plan, step: int):
        self.index = step // plan.steps_per_epoch
        self.first_step = step
        done = step >= plan.total_steps  # resumed from the last step: no epoch to show
        self.bar = _progress(plan.steps_per_epoch, step % plan.steps_per_epoch, f"epoch {self.index + 1}", hide=done)


@dataclasses.dataclass
class Boundary:
    """A step where the host has something to do (an epoch's end, a checkpoint), dispatched but not yet read: the
    epoch's sums and its validation are in flight on the devices, and the state to save is a copy on them (the
    next train call donates the state itself). With host overlap, `finish_boundary` reads it once the next steps are
    queued behind it, so the devices keep training while the host logs, writes the history and saves."""

    step: int
    epoch: EpochProgress | None = None  # at an epoch's end
    sums: tuple[jax.Array, jax.Array] | None = None
    trained_at: float | None = None  # when the sums were read, if `begin_boundary` waited for them
    val: PendingScores | None = None
    to_save: TrainState | None = None


def _check_finite(value: float, epoch: int, step: int, what: str) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"{what} became {value} in epoch {epoch + 1} (by step {step}). Training stopped: "
            "lower config.learning_rate (in a new --workdir) or check the input data."
        )


def begin_boundary(
    plan: Plan, state: TrainState, step: int, epoch: EpochProgress, *, save: bool, wait: bool
) -> tuple[TrainState, Boundary]:
    """Dispatches what the host does at `step`: at an epoch's end, its sums taken out of the state (reset to zero)
    and its validation; with `save`, a copy of the state to save. Returns the state to train on and the boundary to
    finish later. With `wait` (no host overlap), it first waits for the epoch's sums: on XLA:CPU the validation's
    small programs run as they are dispatched, and the epoch's seconds must not hold them."""
    boundary = Boundary(step)
    if step % plan.steps_per_epoch == 0:
        epoch.bar.close()  # its steps are all dispatched; one bar at a time on the terminal
        boundary.epoch, boundary.sums = epoch, (state.loss_sum, state.correct_sum)
        if wait:
            jax.block_until_ready(boundary.sums)
            boundary.trained_at = time.perf_counter()
        boundary.val = plan.evaluator.dispatch(state, plan.dataset.validation)
        zeros = parallel.replicate((np.float32(0), np.float32(0)), plan.programs.mesh)  # two: state is donated
        state = state.replace(loss_sum=zeros[0], correct_sum=zeros[1])
    if save:  # after the reset: a run resumed from an epoch's end starts the next epoch's sums at zero
        boundary.to_save = plan.programs.copy(state)
    return state, boundary


class TrainingClock:
    """The run's training seconds (the epochs' own, from the restored checkpoint's on) and when the host last saw the
    devices done (the training's start, or the last epoch's validation read), where the next epoch's seconds begin."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.mark = time.perf_counter()

    def until(self, arrays: Any) -> float:
        """The training seconds once `arrays` (a state to save inside an epoch) are computed: the epochs' before it
        and the part of its own trained so far, which a run resumed from there would otherwise never count."""
        jax.block_until_ready(arrays)
        return self.seconds + time.perf_counter() - self.mark


def finish_boundary(
    plan: Plan,
    store: checkpoints.CheckpointStore,
    writer: events.EventWriter | None,
    boundary: Boundary,
    clock: TrainingClock,
) -> dict[str, Any] | None:
    """Reads `boundary` (waits for its values): at an epoch's end logs the epoch's train and validation metrics and
    appends them to history.jsonl, then saves its checkpoint if one is due (if none is, raises a background save's
    failure: `CheckpointStore.check`). The epoch's seconds run from the last time the host saw the devices done to the
    moment its sums were read, so they hold its training and not the validation before it. With host overlap the host
    reads an epoch only after dispatching the next: if it dispatches more slowly than the devices run, seconds shift
    between neighbouring epochs, and their sum stays the training's. Adds the epoch's seconds to `clock`; returns its
    validation scores (None at a checkpoint alone)."""
    val = None
    if boundary.epoch is not None:
        config, epoch, step = plan.config, boundary.epoch, boundary.step
        images = plan.steps_per_epoch * config.batch_size
        loss_sum, correct_sum = parallel.scalars(*boundary.sums)  # waits for the epoch's steps
        seconds = (boundary.trained_at or time.perf_counter()) - clock.mark
        clock.seconds += seconds
        train_loss, train_acc = loss_sum / images, correct_sum / images
        _check_finite(train_loss, epoch.index, step, "the training loss")
        val = boundary.val.collect()
        clock.mark = time.perf_counter()
        steps_done = step - epoch.first_step
        record = {
            "epoch": epoch.index + 1,
            "step": step,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "validation_loss": val["loss"],
            "validation_accuracy": val["accuracy"],
            "seconds": seconds,
            "images_per_second": steps_done * config.batch_size / seconds,
        }
        eta = seconds * plan.steps_per_epoch / max(steps_done, 1) * (config.num_epochs - epoch.index - 1)
        eta = time.strftime("%H:%M:%S", time.gmtime(eta))
        logging.info(
            "epoch %d/%d  loss %.4f  acc %.4f  val_loss %s  val_acc %s  %.1f s  %.0f img/s  ETA %s",
            *(epoch.index + 1, config.num_epochs, train_loss, train_acc, metrics.fmt(val["loss"])),
            *(metrics.fmt(val["accuracy"]), seconds, record["images_per_second"], eta),
        )
        with _lead_writes(plan):
            if files.is_lead_process():
                metrics.append_history(plan.workdir, record)
            if writer:
                writer.epoch(record, learning_rate=float(plan.learning_rates[epoch.index]))
    if boundary.to_save is not None:
        seconds = clock.seconds if boundary.epoch else clock.until(boundary.to_save)
        _save(store, writer, plan, boundary.to_save, boundary.step, seconds)
        boundary.to_save = None  # the copy's memory goes once Orbax has it on the host
    else:  # an epoch's end with no save due: a background save that failed (a full disk) stops the run here
        store.check()
    return val


def _already_finished(
    store: checkpoints.CheckpointStore, workdir: pathlib.Path, total_steps: int
) -> dict[str, Any] | None:
    """The newest checkpoint's metadata where the run has trained every step and written its results (else None),
    decided before any model is built: its results.json exists (written only after every checkpoint was committed)
    and its newest checkpoint's metadata reads at the last step. Process 0 decides for every process (on storage
    that is not shared, the others may not see its results.json); every process reads the metadata, since Orbax
    reads a checkpoint on all of them together. A checkpoint that cannot be read is left to the restore, which tells
    damage from a transient error."""
    if not parallel.lead_decides(files.is_lead_process() and (workdir / metrics.RESULTS_FILE).exists()):
        return None
    meta = store.newest_meta()
    return meta if parallel.lead_decides(meta is not None and meta["step"] >= total_steps) else None


def _save(store: checkpoints.CheckpointStore, writer, plan: Plan, state: TrainState, step: int, seconds: float):
    meta = {
        "step": step,
        "epoch": step // plan.steps_per_epoch,
        "train_seconds": seconds,
        "config": config_lib.to_dict(plan.config),
        "machine": plan.machine,
        "trained_on": plan.trained_on,
        "dataset_checksums": dict(plan.dataset.checksums),
    }
    with _lead_writes(plan):
        if writer:  # the points up to a checkpoint are on disk before it
            writer.flush(up_to=step)
    store.check(wait=True)  # the last save's failure, on every process at once (Orbax's save would raise it on one)
    store.save(step, state, meta)


def _lead_writes(plan: Plan):
    """Around the files only process 0 writes during training (history, events): when a write fails there (a full
    disk), every process stops, not process 0 alone (`parallel.lead_writes`)."""
    return parallel.lead_writes(f"writing the history and events of {plan.workdir}")


def _inputs(plan: Plan, step: int) -> TrainInputs:
    """What the train calls from `step` on read: the training set on the devices, the order of `step`'s epoch."""
    images, labels = parallel.replicate((plan.dataset.train.images, plan.dataset.train.labels), plan.programs.mesh)
    perm = plan.permutation(step // plan.steps_per_epoch)
    return TrainInputs(images, labels, perm, plan.roots.dropout, plan.roots.augment)


def _compile(plan: Plan, state: TrainState, inputs: TrainInputs, step: int) -> None:
    """Compiles every program that training from `step` and scoring will run (the phase "compile")."""
    config = plan.config
    sizes = chunks(step, plan.total_steps, plan.steps_per_epoch, config.steps_per_call, plan.every_steps)
    plan.programs.compile_ahead(state, inputs, sizes, eval_batch=plan.evaluator.batch_size)
    events.copy_point(state.loss_sum)  # compiled now: the running-loss points and the queue's marks copy the sum


def _train_epochs(
    plan: Plan,
    store: checkpoints.CheckpointStore,
    writer,
    state: TrainState,
    inputs: TrainInputs,
    step: int,
    train_seconds: float,
    guard: preemption.PreemptionGuard,
) -> tuple[TrainState, float, dict[str, Any] | None]:
    """Trains from `step` to the end on `inputs` (`_inputs(plan, step)`); returns the final state, the training
    seconds and the last epoch's validation scores (None when no epoch ended here). On a signal (`guard`), saves
    and raises `Interrupted`.

    With host overlap (`Plan.host_overlap`), the host finishes each boundary (an epoch's end, a checkpoint) only
    once the train calls up to the next one are queued behind it: while it reads the scores, logs, writes the history
    and saves, the devices keep training; without, at once. A boundary is always finished before a later one is
    saved, so the history is never behind a checkpoint.

    A signal stops a one-process CPU run within `CallQueue.DEPTH` calls; a GPU or TPU run up to an epoch later (with
    host overlap the host runs that far ahead, so the devices never wait for its boundary work); a multi-process job
    at the next boundary, where every process asks whether any caught one (`guard.heard`): all stop together."""
    config, spe, programs, overlap = plan.config, plan.steps_per_epoch, plan.programs, plan.host_overlap
    epoch, clock = EpochProgress(plan, step), TrainingClock(train_seconds)
    last_val, pending, heard = None, None, None
    saved_step = step  # the restored state is saved (step 0: nothing to save before the first call)
    alone = jax.process_count() == 1
    bounded = alone and not overlap and programs.mesh.devices.flat[0].platform == "cpu"  # GPU, TPU: epochs are short
    queue = CallQueue(events.copy_point if bounded else None)
    try:
        for n in chunks(step, plan.total_steps, spe, config.steps_per_call, plan.every_steps):
            state = programs.train(n)(state, inputs, np.int32(step), np.int32(step % spe))
            queue.queued(state)
            step += n
            epoch.bar.update(n)
            if writer:
                writer.steps_done(step, ((step - 1) % spe + 1) * config.batch_size, state.loss_sum)
            save = step % plan.every_steps == 0 or step == plan.total_steps
            boundary_here = step % spe == 0 or save
            if boundary_here:
                state, boundary = begin_boundary(plan, state, step, epoch, save=save, wait=not overlap)
                saved_step = step if save else saved_step
                for ready in (pending, None if overlap else boundary):
                    if ready is not None:
                        last_val = finish_boundary(plan, store, writer, ready, clock) or last_val
                pending = boundary if overlap else None
                if step % spe == 0 and step < plan.total_steps:
                    epoch = EpochProgress(plan, step)
                    inputs = inputs.replace(perm=plan.permutation(epoch.index))
            if (alone or boundary_here) and (heard := guard.heard()):
                break
        if pending is not None:  # the last boundary, or the one pending when a signal came
            last_val = finish_boundary(plan, store, writer, pending, clock) or last_val
        if heard := heard or guard.heard():  # caught during training or while the last boundary was read
            if saved_step != step:
                _save(store, writer, plan, state, step, clock.until(state))
            store.wait()
            raise errors.Interrupted(heard, step, store.directory)
    finally:
        epoch.bar.close()
    return state, clock.seconds, last_val


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, mesh: Mesh | None = None
) -> dict[str, Any]:
    """Trains `config`'s CNN in `workdir` (resuming from its latest checkpoint), evaluates it, writes
    `config.json`, `history.jsonl`, `results.json` and the test predictions; returns the results dict (on a
    process other than the first of a multi-process run, {} where it cannot see the results of a finished run)."""
    workdir = pathlib.Path(workdir)
    lead = files.is_lead_process()
    # From the data on, SIGTERM, SIGINT and SIGHUP stop the run at its next safe point: before training, with nothing to
    # save; during training, once its state is saved (`_train_epochs`).
    with timing.compile_clock() as clock, preemption.PreemptionGuard() as guard:
        # Where the seconds go, kept in results.json; the process's start-up is the first run's.
        phases = timing.Phases(clock, before_run=timing.start_up())
        mesh = mesh or parallel.make_mesh()
        check_devices(config, workdir, mesh)
        replaced = None
        with parallel.stop_together(f"{workdir} holds a run with another config"):
            if lead:
                replaced = config_lib.save_or_check(config, workdir)
        with contextlib.ExitStack() as cleanup:
            accept = cleanup.enter_context(config_lib.put_back_unless_accepted(workdir, replaced))
            loaded = load_data(config, mesh, phases)
            with phases("setup"):
                store = checkpoints.CheckpointStore.for_run(workdir, config.checkpoint)  # on every process
            cleanup.push(store.close_over)
            total_steps = config_lib.last_step(len(loaded[0].train), config.batch_size, config.num_epochs)
            if (finished := _already_finished(store, workdir, total_steps)) is not None:
                check_data(finished, store.directory, loaded[0])  # else its config.json would name the other data
                path = workdir / metrics.RESULTS_FILE  # process 0's: storage may not be shared
                results = metrics.load_results(workdir) if lead or path.exists() else {}
                scores = metrics.scores_line(results) if results else "scored"
                logging.info("Run already finished (%d steps): %s, from %s", total_steps, scores, path)
                _stop_if_signalled(guard, total_steps, store)  # not lost: a comparison's next member would train
                return results
            plan, shapes, num_params = make_plan(config, workdir, mesh, phases, loaded)
            return _run_plan(plan, store, shapes, num_params, phases, guard, accept)


def _stop_if_signalled(guard: preemption.PreemptionGuard, step: int, store: checkpoints.CheckpointStore) -> None:
    """Before the first train call: a signal caught so far (by any process of the run, so that all stop together)
    ends the run with nothing to save (it goes on from `step`, the restored checkpoint's, when rerun)."""
    if heard := guard.heard():
        raise errors.Interrupted(heard, step, store.directory, saved=False)


def _run_plan(
    plan: Plan,
    store: checkpoints.CheckpointStore,
    shapes: TrainState,
    num_params: int,
    phases: timing.Phases,
    guard: preemption.PreemptionGuard,
    accept: Callable[[], None],
) -> dict[str, Any]:
    """Restores `plan`'s run from `store` onto `shapes` (or starts it afresh), trains and scores it (train_and_evaluate
    after its set-up; the caller closes the store), calling `accept` once the restore's checks have passed. A signal
    before training (`guard`) stops the run before the compilation; one during training, once the state is saved."""
    config, workdir, lead = plan.config, plan.workdir, files.is_lead_process()
    with contextlib.ExitStack() as cleanup:
        state, step, train_seconds = plan.restore(store, shapes, phases)
        _stop_if_signalled(guard, step, store)
        writer = None
        with _lead_writes(plan):
            # A finished run given more epochs: its scores are no longer the run's (gone before its config.json
            # is this start's: a kill between the two leaves the old config, its run unscored, not scores under
            # the new one).
            if lead and step < plan.total_steps:
                metrics.forget_scores(workdir)
        accept()  # what follows changes the run's files: its config.json is this start's
        with _lead_writes(plan):
            if lead:  # the history is the lineage of the state training goes on from, even a fresh one
                metrics.truncate_history(workdir, step // plan.steps_per_epoch)
                if writer := events.for_run(workdir, step, config.tensorboard):
                    cleanup.callback(writer.close)
        with phases("compile"):
            inputs = _inputs(plan, step)
            _compile(plan, state, inputs, step)
        _stop_if_signalled(guard, step, store)
        with phases("training"):
            state, train_seconds, val = _train_epochs(plan, store, writer, state, inputs, step, train_seconds, guard)
        with phases("checkpoint_wait"):
            store.close()  # every save committed before the results mark the run finished
        if heard := guard.heard():  # while the last saves were committed: stop, all saved
            raise errors.Interrupted(heard, plan.total_steps, store.directory)
        guard.release(unheard=False)  # the scoring left, all trained and saved: a signal ends it at once, saying so
        with preemption.at_once(preemption.UNFINISHED):
            guard.raise_unheard()  # one caught as the scoring began, too
            results = plan.evaluator.final(
                state,
                workdir,
                num_params=num_params,
                train_seconds=train_seconds,
                val=val,
                phases=phases,
                trained_on=plan.trained_on,
                # the final events before results.json: a run killed between the two is scored again, events and all
                before_results=(lambda r: writer.finish(r, config_lib.to_dict(config), step=plan.total_steps))
                if writer
                else None,
            )
        logging.info("Where the seconds went: %s", phases.line())
        return results
