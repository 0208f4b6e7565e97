"""A run's plan: what stays fixed while it trains (its config, workdir, data, programs, step counts, learning rates),
its data loaded and its model traced (built only where no checkpoint restores), and how its steps split into calls
(`chunks`)."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from fmnist_jax import checkpoints, checksums, config_lib, data, files, ops, parallel, timing
from fmnist_jax.errors import ConfigError
from fmnist_jax.training import state as state_lib
from fmnist_jax.training.evaluate import Evaluator, eval_batch_size, largest_split
from fmnist_jax.training.state import RandomRoots, TrainState
from fmnist_jax.training.step import Programs, resolve_unroll


def chunks(
    start_step: int, total_steps: int, steps_per_epoch: int, steps_per_call: int, every_steps: int
) -> Iterator[int]:
    """Sizes of successive calls: at most `steps_per_call`, never crossing an epoch or checkpoint boundary."""
    step = start_step
    while step < total_steps:
        n = min(
            steps_per_call,
            steps_per_epoch - step % steps_per_epoch,
            every_steps - step % every_steps,
            total_steps - step,
        )
        yield n
        step += n


def resolve_host_overlap(setting: str, platform: str, processes: int = 1, devices: int = 1) -> bool:
    """Whether the host reads each boundary while the devices train on (`config.host_overlap`). "auto": on a GPU or
    TPU in a one-process run. Not on XLA:CPU, where small programs run in the calling thread (the host would wait for
    the devices anyway); not across processes, where reading the validation is itself a program on the devices (an
    all-gather), queued behind the next epoch's calls. "on" over several CPU devices raises ConfigError: train calls
    in flight together, each with its cross-device sum, can deadlock XLA:CPU's shared thread pool (`Programs`)."""
    if setting == "on" and platform == "cpu" and devices > 1:
        raise ConfigError(
            f"config.host_overlap='on' over {devices} CPU devices: train calls in flight together, each summing across "
            "the devices, can deadlock XLA:CPU (it aborts after 40 s); use 'auto' or 'off' (or one CPU device)."
        )
    if setting != "auto":
        return setting == "on"
    return platform != "cpu" and processes == 1


def check_devices(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh: Mesh, *, prefix: str = "config"
) -> None:
    """What the run in `workdir` checks on `mesh`'s devices before anything else: a batch they can split (one that
    checkpoints there were trained with is the run's own: only the devices can change) and host overlap they can take
    (`resolve_host_overlap`). `prefix` names the fields (a comparison member's: config.members.NAME)."""
    trained = config_lib.checkpoint_steps(workdir) and (config_lib.saved_or_none(workdir) or {}).get("batch_size")
    resuming = workdir / config_lib.CHECKPOINTS_DIR if trained == config.batch_size else None
    parallel.check_batch_size(config.batch_size, mesh, field=f"{prefix}.batch_size", resuming=resuming)
    resolve_host_overlap(config.host_overlap, mesh.devices.flat[0].platform, jax.process_count(), mesh.devices.size)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What stays fixed while one run trains: its config, workdir, data, programs and step counts."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    dataset: data.Dataset
    programs: Programs
    evaluator: Evaluator
    roots: RandomRoots
    steps_per_epoch: int
    total_steps: int
    every_steps: int
    learning_rates: np.ndarray  # at each epoch's last step, for TensorBoard
    host_overlap: bool  # `resolve_host_overlap`
    machine: str  # `parallel.run_machine`
    # The machines the run's steps computed on, [{"machine", "from_step"}], oldest first: this one from step 0 until
    # a restore (`resume_from`) sets it from the checkpoint it continues. Checkpoints and results.json keep it.
    trained_on: list[dict] = dataclasses.field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.trained_on[:] = [{"machine": self.machine, "from_step": 0}]

    def resume_from(self, meta: dict, directory: pathlib.Path) -> None:
        """Takes the lineage of the checkpoint of `meta` (checkpoints that predate the record: this machine's) and,
        where it was written on another machine, warns and adds this one from its step: the run trains on, but its
        bits can no longer be an uninterrupted run's. Process 0 alone warns (another host of the job may have
        another CPU). Refuses data other than the checkpoint's (`check_data`)."""
        self.check_data(meta, directory)
        self.trained_on[:] = checkpoints.trained_on(meta, self.machine)
        written = self.trained_on[-1]["machine"]  # the lineage's last machine wrote the checkpoint
        if written != self.machine:
            self.trained_on.append({"machine": self.machine, "from_step": meta["step"]})
            if files.is_lead_process():
                logging.warning(
                    "Checkpoint %d was written on %s and training goes on on %s: the run trains on as usual, but "
                    "no longer to an uninterrupted run's exact bits (docs/running.md#reproducibility-across-cpus).",
                    *(meta["step"], written, self.machine),
                )
        if files.is_lead_process() and (changed := rounding_changes(meta.get("config") or {}, self.config)):
            logging.warning(
                "Checkpoint %d was trained with %s: these speed settings change the rounding, so the run trains on "
                "as usual but no longer to an uninterrupted run's exact bits (docs/running.md#config-fields).",
                meta["step"],
                ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in changed.items()),
            )

    def restore(
        self, store: checkpoints.CheckpointStore, shapes: TrainState, phases: timing.Phases
    ) -> tuple[TrainState, int, float]:
        """The newest valid checkpoint's state (restored onto `shapes`, replicated), step and training seconds (its
        lineage and data checked: `resume_from`), in the phase "restore"; where none restores, the fresh state at
        step 0, in the phase "setup" (the model is initialised only then: a restore would replace its values)."""
        with phases("restore"):
            restored = store.restore_latest(parallel.replicated_shapes(shapes, self.programs.mesh))
            if restored is not None:
                return self._resumed(*restored, store)
        with phases("setup"):
            return self.fresh_state(), 0, 0.0

    def _resumed(
        self, state: TrainState, meta: dict, store: checkpoints.CheckpointStore
    ) -> tuple[TrainState, int, float]:
        """`restore`'s result for the checkpoint of `meta`, once its lineage and data are checked."""
        step, spe = meta["step"], self.steps_per_epoch
        self.resume_from(meta, store.directory)
        if step > self.total_steps:  # config_lib refuses it where the history tells the steps per epoch
            raise ConfigError(
                f"checkpoint {step} in {store.directory} is past the run's last step, {self.total_steps} "
                f"(config.num_epochs={self.config.num_epochs}); raise config.num_epochs (with "
                "--config.resume_with_changes=True) or use a new --workdir."
            )
        if step >= self.total_steps:
            logging.info("Resumed from checkpoint at step %d (training done; the final evaluation follows)", step)
        else:
            where = (step // spe + 1, step % spe, spe)
            logging.info("Resumed from checkpoint at step %d (epoch %d, %d/%d steps into it)", step, *where)
        return state, step, meta["train_seconds"]

    def check_data(self, meta: dict, directory: pathlib.Path) -> None:
        """`check_data` of this plan's data set."""
        check_data(meta, directory, self.dataset)

    def fresh_state(self) -> TrainState:
        """The run's initial state from `config.seed`, on the devices (built only where no checkpoint restores)."""
        _, state, _ = state_lib.create_train_state(self.config, self.steps_per_epoch)
        return parallel.replicate(state, self.programs.mesh)

    def permutation(self, epoch: int) -> jax.Array:
        return self.programs.permutation(self.roots.data, epoch, len(self.dataset.train))


def rounding_changes(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """The speed settings that change the rounding (not the maths) where they differ between a checkpoint's config
    (`saved`, as its metadata keeps it) and `config`: the convolutions' and the scan's forms (`model.conv`,
    `scan_unroll`, as each resolves on this backend), and where the scan is unrolled before or now, `steps_per_call`
    and `checkpoint.every_steps` (other call lengths and fusions). A field the checkpoint's config lacks (an older
    checkpoint) is not compared."""
    backend = jax.default_backend()
    before, now = config_lib.flatten(saved), config_lib.flatten(config_lib.to_dict(config))

    def forms(c: dict) -> dict[str, Any]:
        conv, unroll = c.get("model.conv", "auto"), c.get("scan_unroll", "auto")
        mixed = c.get("compute_dtype", "float32") != "float32"  # bfloat16 picks its own forms
        return {
            "model.conv": ops.training_forms(conv, backend, mixed=mixed) if conv in ops.CONV_IMPLS else conv,
            "scan_unroll": "full" if resolve_unroll(unroll, backend, conv) else "rolled",
        }

    same_dtype = before.get("compute_dtype", "float32") == now.get("compute_dtype", "float32")  # else that says it
    fields = [f for f in ("model.conv", "scan_unroll") if f in before and (same_dtype or f != "model.conv")]
    resolved_before, resolved_now = forms(before), forms(now)
    changed = {f: (before[f], now.get(f)) for f in fields if resolved_before[f] != resolved_now[f]}
    if "full" in (resolved_before["scan_unroll"], resolved_now["scan_unroll"]):
        lengths = ("steps_per_call", "checkpoint.every_steps")
        changed |= {f: (before[f], now.get(f)) for f in lengths if f in before and before[f] != now.get(f)}
    return changed


def check_data(meta: dict, directory: pathlib.Path, dataset: data.Dataset) -> None:
    """Raises ConfigError where the checkpoint of `meta` (in `directory`) was trained on files whose content differs
    from `dataset`, the data read now (its `dataset_checksums`; where none are recorded, nothing to compare), or on
    data read from another source (IDX files, TFDS's arrays: another split). Process 0 checks (another host may
    read other files) and every process of a job stops with it."""
    with parallel.stop_together(f"the data differ from those of the checkpoints in {directory}"):
        if files.is_lead_process() and (why := _other_data(meta, directory, dataset)):
            raise ConfigError(why)


def _other_data(meta: dict, directory: pathlib.Path, dataset: data.Dataset) -> str | None:
    """`check_data`'s refusal, or None."""
    before, now = meta.get("dataset_checksums") or {}, dataset.checksums
    if why := checksums.other_source(before, now):
        return (
            f"checkpoint {meta['step']} in {directory} was trained on the same images read otherwise: {why}. Read "
            "them as it did (config.data.source, config.data.dir), or train in a new --workdir."
        )
    if how := checksums.what_differs(before, now):
        return (
            f"checkpoint {meta['step']} in {directory} was trained on other data than {dataset.source} holds: {how}. "
            "Point config.data.dir (or FMNIST_DATA_DIR) at the files it trained on, or train in a new --workdir."
        )
    return None


def load_data(config: ml_collections.ConfigDict, mesh: Mesh, phases: timing.Phases) -> tuple[data.Dataset, int]:
    """The run's data set and its steps per epoch (the phase "data"); logs the mesh and the data."""
    backend = jax.default_backend()
    n = mesh.devices.size
    logging.info(
        "Mesh: %d %s device(s) over %d process(es), batch %d (%d per device)",
        *(n, backend, jax.process_count(), config.batch_size, config.batch_size // n),
    )
    with phases("data"):
        dataset = data.load(config.data, seed=config.seed)
    steps_per_epoch = config_lib.steps_per_epoch(len(dataset.train), config.batch_size)
    if steps_per_epoch == 0:
        fewer_out = f"hold fewer images out for validation (config.data.validation_size={config.data.validation_size})"
        more = fewer_out if config.data.num_train is None else f"raise config.data.num_train or {fewer_out}"
        raise ConfigError(
            f"config.batch_size={config.batch_size} exceeds the {len(dataset.train)} training images; lower it or "
            f"{more}."
        )
    logging.info(
        "Data from %s: %d train, %d validation, %d test images; %d steps/epoch",
        *(dataset.source, len(dataset.train), len(dataset.validation), len(dataset.test), steps_per_epoch),
    )
    return dataset, steps_per_epoch


def make_plan(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    mesh: Mesh,
    phases: timing.Phases,
    loaded: tuple[data.Dataset, int],
) -> tuple[Plan, TrainState, int]:
    """The run's plan, its state's shapes and its number of parameters, on `loaded` (`load_data`'s result): the
    phase "setup" (tracing the model, building its programs, the random roots, the learning rates). The state itself
    is initialised only where no checkpoint restores (`Plan.fresh_state`): a restore would replace its values."""
    dataset, steps_per_epoch = loaded
    with phases("setup"):
        graphs, state, num_params = state_lib.abstract_train_state(config, steps_per_epoch)
        recipe = state_lib.Recipe.from_config(config)
        unroll = resolve_unroll(config.scan_unroll, jax.default_backend(), config.model.conv)
        programs = Programs(graphs, mesh, config.batch_size, unroll=unroll, recipe=recipe)
        plan = Plan(
            config=config,
            workdir=workdir,
            dataset=dataset,
            programs=programs,
            evaluator=Evaluator(config, dataset, programs, eval_batch_size(config, mesh, largest_split(dataset))),
            roots=RandomRoots.from_seed(config.seed, augment=recipe.augment.enabled),
            steps_per_epoch=steps_per_epoch,
            total_steps=config_lib.last_step(len(dataset.train), config.batch_size, config.num_epochs),
            every_steps=config.checkpoint.every_steps or steps_per_epoch,
            learning_rates=state_lib.learning_rates_at(
                config, steps_per_epoch, [(e + 1) * steps_per_epoch - 1 for e in range(config.num_epochs)]
            ),
            host_overlap=resolve_host_overlap(
                config.host_overlap, mesh.devices.flat[0].platform, jax.process_count(), mesh.devices.size
            ),
            machine=parallel.run_machine(mesh),
        )
    return plan, state, num_params
