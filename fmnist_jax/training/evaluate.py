"""Scoring a CNN: padded evaluation of a split, the final scores written as results.json and predictions.npz,
and a checkpoint restored for `mode=evaluate` and `mode=predict`."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from fmnist_jax import checkpoints, checksums, config_lib, data, files, metrics, parallel, timing
from fmnist_jax.errors import CheckpointError
from fmnist_jax.training import state as state_lib
from fmnist_jax.training.step import Programs

# Evaluation batch when config.eval_batch_size is 0: small on CPU, where the activations of 100 images stay
# in cache (faster there than batches of 1000), large on accelerators.
AUTO_EVAL_BATCH_CPU, AUTO_EVAL_BATCH_ACCELERATOR = 100, 1000


def eval_batch_size(config: ml_collections.ConfigDict, mesh: Mesh, images: int | None = None) -> int:
    """`config.eval_batch_size` (0: by backend), at most the `images` scored where given (the largest split: a batch
    past them would only pad, and an absurd one allocate it), rounded up to a multiple of the device count."""
    n = mesh.devices.size
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    size = config.eval_batch_size or (AUTO_EVAL_BATCH_CPU if on_cpu else AUTO_EVAL_BATCH_ACCELERATOR)
    return math.ceil((size if images is None else min(size, max(images, 1))) / n) * n


def largest_split(dataset: data.Dataset) -> int:
    """The number of images of the largest split scored (validation, test): `eval_batch_size`'s `images`."""
    return max(len(dataset.validation), len(dataset.test))


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with zeros appended along its first axis up to `size`."""
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])


@dataclasses.dataclass(frozen=True)
class PendingScores:
    """A split's evaluation dispatched to the devices and not yet read: its per-batch outputs and the labels."""

    outputs: list[tuple[jax.Array, jax.Array]]
    labels: np.ndarray

    def collect(self) -> dict[str, Any]:
        """Loss, accuracy and probabilities over the split (waits for the outputs). An empty split
        (validation_size=0: training on all 60k images) has no loss or accuracy: None."""
        n = len(self.labels)
        if n == 0:
            return {"loss": None, "accuracy": None, "probs": np.zeros((0, data.NUM_CLASSES))}
        losses, probs = (np.concatenate(parts)[:n] for parts in zip(*parallel.to_host(self.outputs), strict=True))
        return {
            "loss": float(np.sum(losses, dtype=np.float64) / n),
            "accuracy": float(np.mean(probs.argmax(-1) == self.labels)),
            "probs": probs,
        }


def dispatch_split(
    programs: Programs, state: state_lib.TrainState, split: data.Split, *, batch_size: int
) -> PendingScores:
    """Dispatches the evaluation of every image of `split`, in fixed-size batches, the last padded, without
    waiting for it."""
    n = len(split)
    padded = math.ceil(n / batch_size) * batch_size
    images, labels, mask = _pad(split.images, padded), _pad(split.labels, padded), np.arange(padded) < n
    outputs = [
        programs.evaluate(
            state,
            *parallel.shard_batch(
                (images[s : s + batch_size], labels[s : s + batch_size], mask[s : s + batch_size]), programs.mesh
            ),
        )
        for s in range(0, padded, batch_size)
    ]
    return PendingScores(outputs, split.labels)


def evaluate_split(
    programs: Programs, state: state_lib.TrainState, split: data.Split, *, batch_size: int
) -> dict[str, Any]:
    """Loss, accuracy and probabilities over every image of `split` (`PendingScores.collect`)."""
    return dispatch_split(programs, state, split, batch_size=batch_size).collect()


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """What scoring a state needs, fixed for a run: its config, data, programs and evaluation batch."""

    config: ml_collections.ConfigDict
    dataset: data.Dataset
    programs: Programs
    batch_size: int

    def dispatch(self, state: state_lib.TrainState, split: data.Split) -> PendingScores:
        """`split`'s evaluation, dispatched (`.collect()` waits for its scores)."""
        return dispatch_split(self.programs, state, split, batch_size=self.batch_size)

    def final(
        self,
        state: state_lib.TrainState,
        out: pathlib.Path,
        *,
        num_params: int,
        train_seconds: float,
        val: dict[str, Any] | None = None,
        phases: timing.Phases | None = None,
        trained_seconds: dict[str, Any] | None = None,
        checkpoint_step: int | None = None,
        scored_with: dict[str, Any] | None = None,
        trained_on: list[dict] | None = None,
        before_results: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Scores `state` on validation (unless `val` already holds its scores) and test; writes results.json
        and predictions.npz to `out` (predictions first: results.json marks a run finished). With `phases`, the
        scoring is the phase "evaluation", the predictions' writing "writing", and results.json keeps them all.
        `trained_seconds`: the training run's `seconds`, kept, with this scoring's beside them as "evaluate";
        `checkpoint_step`: the step of a checkpoint scored apart from its run (results.json says so), `scored_with`
        the settings other than the run's it was scored with; `trained_on`: the machines its steps computed on
        (`Plan.trained_on`), kept beside the one that scores (`machine`); `before_results`: what else to write from
        the results on the process that writes, before results.json marks the run finished (the TensorBoard events)."""
        config, dataset = self.config, self.dataset
        phases = phases or timing.Phases()
        with phases("evaluation"):
            if val is None:
                val = self.dispatch(state, dataset.validation).collect()
            start = time.perf_counter()
            test = self.dispatch(state, dataset.test).collect()
            predict_seconds = time.perf_counter() - start
        preds = test["probs"].argmax(-1)
        scores = metrics.evaluate(dataset.test.labels, preds, test["probs"], class_names=dataset.class_names)
        results = metrics.make_results(
            model=config.model.name,
            config_name=config.name,
            scores=scores,
            validation_accuracy=val["accuracy"],
            num_params=num_params,
            train_seconds=train_seconds,
            predict_seconds=predict_seconds,
            seed=config.seed,
            dataset=dataset,
            extra={
                "test_loss": test["loss"],
                "validation_loss": val["loss"],
                "params_sha256": state_lib.params_sha256(state),
                "machine": parallel.run_machine(self.programs.mesh),
                **({} if trained_on is None else {"trained_on": trained_on or None}),  # None: not recorded
                **({} if checkpoint_step is None else {"checkpoint_step": checkpoint_step}),
                **({"scored_with": scored_with} if scored_with else {}),
            },
        )
        # Process 0 writes; a write that fails there (a full disk) stops every process, not it alone.
        with parallel.lead_writes(f"writing the results in {out}"):
            if files.is_lead_process():
                with phases("writing"):
                    metrics.save_predictions(
                        out, labels=dataset.test.labels, preds=preds, probs=test["probs"], images=dataset.test.images
                    )
                record = phases.record()
                results["seconds"] = {**trained_seconds, "evaluate": record} if trained_seconds else record
                if before_results:
                    before_results(results)
                metrics.save_results(out, results)
        logging.info("test accuracy %.4f  (validation %s)", results["test_accuracy"], metrics.fmt(val["accuracy"]))
        return results


def restore_for_inference(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh: Mesh
) -> tuple[Programs, state_lib.TrainState, int, dict[str, Any]]:
    """The programs and the state of checkpoint `config.checkpoint.step` (None: the latest valid one)."""
    none = CheckpointError(
        f"no checkpoint in {workdir / config_lib.CHECKPOINTS_DIR}: train first "
        f"(python main.py --config=configs/{config.name}.py --workdir={workdir}, or the config file you train with)."
    )
    if not config_lib.checkpoint_steps(workdir):  # before the store makes a checkpoint folder there
        raise none
    # Shapes alone as the target: no model is initialised (and its program compiled) for the checkpoint to replace
    graphs, shapes, num_params = state_lib.abstract_train_state(config)
    read_only = not files.writable(workdir / config_lib.CHECKPOINTS_DIR)  # on read-only storage (an archive)
    store = checkpoints.CheckpointStore.for_run(workdir, config.checkpoint, async_save=False, read_only=read_only)
    try:
        restored = store.restore_latest(parallel.replicated_shapes(shapes, mesh), step=config.checkpoint.step)
    finally:
        store.close()
    if restored is None:
        raise none
    state, meta = restored
    logging.info("Using checkpoint at step %d", meta["step"])
    programs = Programs(graphs, mesh, config.batch_size, unroll=False, recipe=state_lib.Recipe.from_config(config))
    return programs, state, num_params, meta


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Scores a checkpoint on the validation and test sets (mode=evaluate): the latest, at the run's last step, with
    the run's settings, into the workdir's results.json and predictions.npz; the one `config.checkpoint.step` names,
    the latest of a run not yet finished, or one scored with settings other than the run's config.json (a field of
    config_lib.SCORING_FIELDS the command line set; results.json's `scored_with` names them), into
    WORKDIR/evaluate_step_N/ (with other settings, WORKDIR/evaluate_step_N_FIELD=VALUE/): results.json marks a run
    finished, and a rerun and the comparison report read it as the run's own results."""
    workdir = pathlib.Path(workdir)
    mesh = parallel.make_mesh()
    programs, state, num_params, meta = restore_for_inference(config, workdir, mesh)
    dataset = data.load(config.data, seed=config.seed)
    saved = workdir / config_lib.CONFIG_FILE  # what the run trains to (its data is this config's: checked)
    read = None  # process 0's reading, which every process takes: they score into the same folder
    with parallel.stop_together(f"reading {saved}"):
        if files.is_lead_process():
            read = config_lib.read_saved(saved) if saved.exists() else config_lib.to_dict(config)
    trained = parallel.lead_shares(read)
    last_step = config_lib.last_step(len(dataset.train), trained["batch_size"], trained["num_epochs"])
    requested = config_lib.to_dict(config)  # fields of another version's config.json, on one side only: not asked
    both = config_lib.flatten(trained).keys() & config_lib.flatten(requested).keys() & set(config_lib.SCORING_FIELDS)
    other = {k: new for k, (_, new) in config_lib.diff(trained, requested).items() if k in both}
    other_data = checksums.what_differs(meta.get("dataset_checksums") or {}, dataset.checksums)
    own = config.checkpoint.step is None and meta["step"] == last_step and not other and not other_data
    # One folder per checkpoint and settings: a scoring with other settings never replaces another's.
    apart = "_".join([f"evaluate_step_{meta['step']}", *(f"{k}={v}" for k, v in other.items())])
    out = workdir if own else workdir / (apart + ("_other_data" if other_data else ""))
    if other_data:
        logging.info("Data other than the checkpoint's (%s): scored apart, into %s", other_data, out)
    if other:
        asked = ", ".join(f"{k}={v!r}" for k, v in other.items())
        logging.info("Settings other than the run's (%s): scored apart from its results, into %s", asked, out)
    elif config.checkpoint.step is None and meta["step"] != last_step:
        logging.info("Checkpoint %d is not the run's last (step %d): scored apart from it", meta["step"], last_step)
    logging.info("Evaluating on %d %s device(s) into %s", mesh.devices.size, jax.default_backend(), out)
    with parallel.lead_writes(f"making {out}"):
        if files.is_lead_process():
            out.mkdir(exist_ok=True)
    evaluator = Evaluator(config, dataset, programs, eval_batch_size(config, mesh, largest_split(dataset)))
    try:  # a run scored again keeps where its training's seconds went
        trained_seconds = metrics.load_results(out).get("seconds") if own else None
    except metrics.ResultsError:
        trained_seconds = None
    return evaluator.final(
        state,
        out,
        num_params=num_params,
        train_seconds=meta["train_seconds"],
        trained_seconds=trained_seconds,
        checkpoint_step=None if own else meta["step"],
        scored_with=other,
        trained_on=checkpoints.trained_on(meta),
    )


def predict_images(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 10) of uint8 images (N, 28, 28) under a checkpoint (mode=predict)."""
    workdir = pathlib.Path(workdir)
    mesh = parallel.make_mesh()
    programs, state, _, _ = restore_for_inference(config, workdir, mesh)
    split = data.Split(images, np.zeros(len(images), np.int32))
    return evaluate_split(programs, state, split, batch_size=eval_batch_size(config, mesh, len(images)))["probs"]
