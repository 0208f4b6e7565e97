"""A run's plan: what stays fixed while it trains (its config, workdir, data, programs, step counts, learning rates),
its data loaded and its model built, and how its steps split into calls (`chunks`)."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from fmnist_jax import config_lib, data, files, parallel, timing
from fmnist_jax.errors import ConfigError
from fmnist_jax.training import state as state_lib
from fmnist_jax.training.evaluate import Evaluator, eval_batch_size
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
    machine: str  # `parallel.run_machine`

    def warn_if_moved(self, meta: dict) -> None:
        """Warns when the checkpoint of `meta` was written on another machine (checkpoints older than the
        record say nothing): the run trains on, but its bits can no longer be an uninterrupted run's. Process 0
        alone compares (it wrote the record; another host of the job may have another CPU)."""
        written = meta.get("machine", self.machine)
        if written != self.machine and files.is_lead_process():
            logging.warning(
                "Checkpoint %d was written on %s and training goes on on %s: the run trains on as usual, but no "
                "longer to an uninterrupted run's exact bits (docs/running.md#reproducibility-across-cpus).",
                *(meta["step"], written, self.machine),
            )

    def permutation(self, epoch: int) -> jax.Array:
        return self.programs.permutation(self.roots.data, epoch, len(self.dataset.train))


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
    """The run's plan, its fresh (host-side) state and its number of parameters, on `loaded` (`load_data`'s
    result): the phase "setup" (building the model, its programs, the random roots, the learning rates)."""
    dataset, steps_per_epoch = loaded
    with phases("setup"):
        graphs, state, num_params = state_lib.create_train_state(config, steps_per_epoch)
        recipe = state_lib.Recipe.from_config(config)
        unroll = resolve_unroll(config.scan_unroll, jax.default_backend(), config.model.conv)
        programs = Programs(graphs, mesh, config.batch_size, unroll=unroll, recipe=recipe)
        plan = Plan(
            config=config,
            workdir=workdir,
            dataset=dataset,
            programs=programs,
            evaluator=Evaluator(config, dataset, programs, eval_batch_size(config, mesh)),
            roots=RandomRoots.from_seed(config.seed, augment=recipe.augment.enabled),
            steps_per_epoch=steps_per_epoch,
            total_steps=config_lib.last_step(len(dataset.train), config.batch_size, config.num_epochs),
            every_steps=config.checkpoint.every_steps or steps_per_epoch,
            learning_rates=state_lib.learning_rates_at(
                config, steps_per_epoch, [(e + 1) * steps_per_epoch - 1 for e in range(config.num_epochs)]
            ),
            machine=parallel.run_machine(mesh),
        )
    return plan, state, num_params
