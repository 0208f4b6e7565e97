"""Dispatch on `config.kind` and `config.mode`: what main.py runs (a comparison's members: `compare`)."""

from __future__ import annotations

import contextlib
import pathlib
import sys
from collections.abc import Collection, Iterator
from typing import Any

import ml_collections
from absl import logging

from fmnist_jax import config_lib, data, files, predict, preemption
from fmnist_jax.errors import LOG_FILE_ONLY, CheckpointError, ConfigError, Interrupted

KINDS = ("cnn", "baseline", "compare")
MODES = ("train", "evaluate", "predict")


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, given: Collection[str] | None = None) -> Any:
    """Runs `config` in `workdir`: train returns the results dict, evaluate too, predict the rows printed.

    `evaluate` and `predict` take the model (and data) fields that `given` does not name from the trained run's
    config.json (`given`: the fields set on the command line; None: all, so that each must match).

    The workdir is locked for the run (in a multi-process job by process 0, the one that writes); a full disk
    anywhere below surfaces as one `files.DiskFull` error that names the workdir. A run without JAX (a baseline, a
    comparison of baselines alone) launched on several ranks runs in the first alone: the others return None.
    """
    kind, mode = config.get("kind"), config.mode
    if kind not in KINDS:
        raise ConfigError(f"config.kind={kind!r} is not one of {KINDS}.")
    if mode not in MODES:
        raise ConfigError(f"config.mode={mode!r} is not one of {MODES}.")
    readers = {"predict.": ("predict",), "checkpoint.step": ("evaluate", "predict")}  # fields one mode alone reads
    if unread := sorted(f for f in given or () for k, m in readers.items() if f.startswith(k) and mode not in m):
        modes = " or ".join(next(m for k, m in readers.items() if unread[0].startswith(k)))
        doing = "trains" if mode == "train" else f"runs {mode}"
        raise ConfigError(
            f"--config.{unread[0]} is read by --config.mode={modes} alone, and this command {doing}: set that mode, or "
            "drop the field."
        )
    workdir = pathlib.Path(workdir)
    if mode != "train" and kind != "compare" and (trouble := _not_a_run(workdir)):  # before the lock makes or marks it
        raise ConfigError(
            f"--workdir={workdir} {trouble}: {mode} reads a trained run's folder; check the path, or train first."
        )
    uses_jax = kind == "cnn" or (
        kind == "compare" and any(m.enabled and m.kind == "cnn" for m in config.members.values())
    )
    if uses_jax:
        from fmnist_jax import parallel  # JAX only when needed

        parallel.maybe_initialize_distributed()  # first: which process leads is JAX's to say from here on
    elif "jax" not in sys.modules and not files.is_lead_process():  # scikit-learn alone, launched on several ranks
        logging.info(
            "A process other than the first of a multi-process job (%s): a %s run is one process's, and the first "
            "runs it in %s; nothing to do here.",
            files.rank_description(),
            kind,
            workdir,
        )
        return None
    made = files.outermost_missing(workdir)  # the folder the lock's making of `workdir` will make first, or None
    with contextlib.ExitStack() as lock:
        # Joined above, or a comparison's baseline member: its processes stop together.
        agreed = files.stop_together(f"the workdir {workdir} could not be locked")
        # The lock, held by the process that writes; `predict` reads a run it cannot write (an archive) unlocked.
        locks = files.is_lead_process() and (mode != "predict" or files.writable(workdir))
        with agreed:
            locked_at = lock.enter_context(files.workdir_lock(workdir) if locks else contextlib.nullcontext())
        if made and files.is_lead_process():  # once locked (a run refused the lock must not touch the folder)
            lock.enter_context(_removed_if_unused(workdir, made))  # exits before the lock is released
        try:
            if locked_at is not None:  # alone in the workdir: what a killed start left half-done goes first
                files.undo_killed_writes(
                    locked_at, workdir, workdir / config_lib.CHECKPOINTS_DIR, replaced=(config_lib.CONFIG_FILE,)
                )
            if kind == "cnn":
                return _run_cnn(config, workdir, mode, given)
            if kind == "compare":
                from fmnist_jax import compare  # which runs each member through `run`

                return compare.run_compare(config, workdir, given)
            return _run_baseline(config, workdir, mode, given)
        except Exception as e:
            if files.is_disk_full(e) and not isinstance(e, files.DiskFull):
                doing = "saving a checkpoint" if isinstance(e, CheckpointError) else "writing its files"
                logging.warning("The full disk's error: %s: %s", type(e).__name__, e, extra=LOG_FILE_ONLY)
                raise files.disk_full_error(workdir, doing, _rerun_after_a_full_disk(kind, mode)) from e
            raise


def _rerun_after_a_full_disk(kind: str, mode: str) -> str:
    """What the same command does when run again after a full disk stopped it."""
    if mode != "train":
        return f"it runs {mode} again on the trained run, which is as it was"
    if kind == "cnn":
        return "it resumes from the last complete checkpoint"
    if kind == "compare":
        return "it keeps the members' finished runs and goes on from there"
    return "it fits the model again (a baseline keeps no checkpoint)"


def _not_a_run(workdir: pathlib.Path) -> str | None:
    """Why `workdir` holds no run to evaluate or predict with (None where it may): a run's folder holds its
    config.json, its checkpoints or its fitted model (a copy may lack its config.json)."""
    if why := files.not_a_folder(workdir, "a run's folder"):
        return f"is {why}"
    if not workdir.is_dir():
        return "does not exist"
    marks = (config_lib.CONFIG_FILE, config_lib.CHECKPOINTS_DIR, config_lib.MODEL_FILE)
    if not any((workdir / mark).exists() for mark in marks):
        return f"holds no run (no {', '.join(marks[:-1])} or {marks[-1]})"
    return None


@contextlib.contextmanager
def _removed_if_unused(workdir: pathlib.Path, made: pathlib.Path) -> Iterator[None]:
    """Removes `workdir`, which this run made (with its parents up to `made`) and locked, if the `with` fails before
    it kept anything but its lock and config.json (and empty folders), and then those parents while they are empty: a
    command refused for a bad setting or missing data leaves no folder behind. A signal (`Interrupted`, Ctrl-C)
    leaves it as it is: its line says to rerun the same command there."""
    try:
        yield
    except Interrupted:
        raise
    except Exception:
        with contextlib.suppress(OSError):
            if _unused(workdir):
                files.remove_made(workdir, made)
        raise


def _unused(workdir: pathlib.Path) -> bool:
    """Whether `workdir` holds only its lock, config.json and empty folders: stricter than `config_lib.kept_nothing`
    (which lets a rerun replace config.json), since this removes the folder with whatever else it holds."""
    return all(
        p.name in config_lib.NOTHING_COMPUTED or (p.is_dir() and not any(p.iterdir())) for p in workdir.iterdir()
    )


def _run_cnn(config: ml_collections.ConfigDict, workdir: pathlib.Path, mode: str, given: Collection[str] | None) -> Any:
    import jax  # JAX only when needed

    from fmnist_jax import compile_cache, parallel
    from fmnist_jax.training import evaluate, loop, state

    state.check_config(config)
    compile_cache.set_up(config.compilation_cache, jax.default_backend())
    if mode == "train":
        return loop.train_and_evaluate(config, workdir)
    taken = {}
    with parallel.stop_together(f"{workdir} was trained with another config"):
        taken = config_lib.trained_fields(config, workdir, evaluate=mode == "evaluate", given=given)
    config_lib.take(config, parallel.lead_shares(taken), workdir)  # process 0's reading, on every process
    with preemption.at_once(preemption.UNFINISHED):  # no safe point to stop at: a signal ends it, saying so
        if mode == "evaluate":
            return evaluate.evaluate_checkpoint(config, workdir)
        images, names, output = predict.inputs_and_output(config, workdir)
        probs = evaluate.predict_images(config, workdir, images)
        return predict.report(output, names, probs, probs.argmax(-1))


def _run_baseline(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, mode: str, given: Collection[str] | None
) -> Any:
    from fmnist_jax import baselines

    baselines.check_config(config)
    if mode == "train":
        replaced = config_lib.save_or_check(config, workdir)
        unfinished = f"before {config.model.name} in {workdir} had finished; a baseline keeps no checkpoint"
        with preemption.at_once(unfinished), config_lib.put_back_unless_accepted(workdir, replaced) as accept:
            return baselines.fit_and_evaluate(config, workdir, accept)
    config_lib.take(
        config, config_lib.trained_fields(config, workdir, evaluate=mode == "evaluate", given=given), workdir
    )
    with preemption.at_once(preemption.UNFINISHED):
        if mode == "evaluate":
            estimator = baselines.load_estimator(workdir)
            return baselines.score_saved(config, workdir, estimator, data.load(config.data, seed=config.seed))
        images, names, output = predict.inputs_and_output(config, workdir)
        preds, probs = baselines.predict(baselines.load_estimator(workdir), baselines.flatten(images))
        return predict.report(output, names, probs, preds)
