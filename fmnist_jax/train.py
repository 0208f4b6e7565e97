"""Training the CNN: train state, jitted multi-step train call, padded evaluation, the epoch loop.

The model is an `nnx.Module` and the optimizer an `nnx.Optimizer`; both are split once into a pure pytree
(`TrainState`) that `jax.jit`, `jax.lax.scan`, the mesh shardings and Orbax all handle as plain arrays.
Everything random follows from `config.seed`: the epoch-e order is permutation(fold_in(data_key, e)), the
dropout key of global step t is fold_in(dropout_key, t). Resuming at any step therefore replays exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from fmnist_jax import augment, checkpoints, config_lib, data, errors, events, files, metrics, models, ops, parallel
from fmnist_jax.errors import ConfigError, UserError

UNROLL_CHOICES = ("auto", "full", "rolled")
SCHEDULES = ("constant", "warmup_cosine")
# Evaluation batch when config.eval_batch_size is 0: small on CPU, where the activations of 100 images stay
# in cache (faster than batches of 1000 there, benchmarks/train_speed.py), large on accelerators.
AUTO_EVAL_BATCH_CPU, AUTO_EVAL_BATCH_ACCELERATOR = 100, 1000


class TrainingError(UserError):
    """Training cannot go on (a NaN loss, a failed checkpoint save); the message says what to change."""


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first CNN config field whose value cannot run."""
    config_lib.check_positive(
        config, "num_epochs", "batch_size", "learning_rate", "steps_per_call", "checkpoint.max_to_keep"
    )
    config_lib.check_positive(
        config, "seed", "checkpoint.every_steps", "data.validation_size", "eval_batch_size", allow_zero=True
    )
    if config.scan_unroll not in UNROLL_CHOICES:
        raise ConfigError(f"config.scan_unroll={config.scan_unroll!r} must be one of {UNROLL_CHOICES}.")
    if config.model.conv not in ops.CONV_IMPLS:
        raise ConfigError(f"config.model.conv={config.model.conv!r} must be one of {ops.CONV_IMPLS}.")
    config_lib.check_positive(
        config,
        "weight_decay",
        "label_smoothing",
        "ema_decay",
        "augment.translate",
        "augment.erase_prob",
        "schedule.warmup_epochs",
        allow_zero=True,
    )
    if config.schedule.name not in SCHEDULES:
        raise ConfigError(f"config.schedule.name={config.schedule.name!r} must be one of {SCHEDULES}.")
    for field in ("label_smoothing", "ema_decay", "augment.erase_prob"):
        value = config_lib.get(config, field)
        if value >= 1:
            raise ConfigError(f"config.{field}={value!r} must be below 1 (0 turns it off).")
    if config.augment.translate >= 14:
        raise ConfigError(f"config.augment.translate={config.augment.translate} must be below 14 pixels.")
    try:  # the model's fields (name, widths, compute dtype, ...): built abstractly, nothing allocated
        nnx.eval_shape(lambda: models.create_model(config.model.name, seed=0, **model_kwargs(config)))
    except TypeError as e:
        raise ConfigError(f"config.model does not fit model {config.model.name!r}: {e}.") from e


# --------------------------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: model and optimizer state plus this epoch's running metric sums, and the
    exponential moving average of the model state when `config.ema_decay` > 0 (None otherwise: no leaves)."""

    model: nnx.State
    optimizer: nnx.State
    loss_sum: jax.Array
    correct_sum: jax.Array
    ema: nnx.State | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The training features beyond the study's, all off in configs/cnn.py (static under `jax.jit`)."""

    label_smoothing: float = 0.0
    augment: augment.Augment = dataclasses.field(default_factory=augment.Augment)
    ema_decay: float = 0.0
    tta_flip: bool = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Recipe:
        a = config.augment
        return cls(
            label_smoothing=float(config.label_smoothing),
            augment=augment.Augment(flip=bool(a.flip), translate=int(a.translate), erase_prob=float(a.erase_prob)),
            ema_decay=float(config.ema_decay),
            tta_flip=bool(config.tta_flip),
        )


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The static halves of `nnx.split`: how to turn a `TrainState` back into modules."""

    model: Any
    optimizer: Any

    def merge(self, state: TrainState) -> tuple[nnx.Module, nnx.Optimizer]:
        model = nnx.merge(self.model, state.model)
        return model, nnx.merge(self.optimizer, state.optimizer)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> float | optax.Schedule:
    """`config.learning_rate`, constant (the study) or with a linear warm-up and a cosine decay to zero."""
    if config.schedule.name == "constant":
        return config.learning_rate
    total = max(steps_per_epoch * config.num_epochs, 1)
    warmup = min(round(config.schedule.warmup_epochs * steps_per_epoch), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, total, end_value=0.0)


def learning_rate_at(config: ml_collections.ConfigDict, steps_per_epoch: int, step: int) -> float:
    """The learning rate that step `step` uses."""
    rate = learning_rate_schedule(config, steps_per_epoch)
    return float(rate(step)) if callable(rate) else float(rate)


def _is_kernel(params: nnx.State) -> Any:
    """Weight decay applies to kernels (rank >= 2), not to biases or BatchNorm scales and offsets."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """Adam with the study's (Keras) defaults; AdamW when `config.weight_decay` > 0; either with the schedule
    of `config.schedule` (the optimizer state's structure does not depend on `steps_per_epoch`)."""
    rate = learning_rate_schedule(config, steps_per_epoch)
    b1, b2, eps = config.adam.b1, config.adam.b2, config.adam.eps
    if config.weight_decay > 0:
        return optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=config.weight_decay, mask=_is_kernel)
    return optax.adam(rate, b1=b1, b2=b2, eps=eps)


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The model's constructor arguments: every field of `config.model` but the name (lists become tuples),
    and `config.compute_dtype`."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.items() if k != "name"}
    return {**kwargs, "compute_dtype": config.compute_dtype}


def create_train_state(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> tuple[Graphs, TrainState, int]:
    """A fresh model and optimizer from `config.seed`: (graphs, host-side state, number of parameters)."""
    model = models.create_model(config.model.name, seed=config.seed, **model_kwargs(config))
    optimizer = nnx.Optimizer(model, make_optimizer(config, steps_per_epoch), wrt=nnx.Param)
    model_graph, model_state = nnx.split(model)
    opt_graph, opt_state = nnx.split(optimizer)
    zero = jnp.zeros((), jnp.float32)
    ema = jax.tree.map(jnp.copy, model_state) if config.ema_decay > 0 else None
    state = TrainState(model=model_state, optimizer=opt_state, loss_sum=zero, correct_sum=zero, ema=ema)
    return Graphs(model_graph, opt_graph), state, models.count_params(model)


# --------------------------------------------------------------------------------------------- steps


def to_inputs(images: jax.Array) -> jax.Array:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1], as the study scaled its pixels."""
    return (images.astype(jnp.float32) / 255.0)[..., None]


def loss_fn(
    model: nnx.Module, inputs: jax.Array, labels: jax.Array, dropout_key: jax.Array | None, label_smoothing: float
) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy over the batch (against smoothed labels when `label_smoothing` > 0), and the
    logits."""
    logits = model(inputs, dropout_key=dropout_key)
    if label_smoothing > 0:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets).mean(), logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


def ema_update(ema: nnx.State, new: nnx.State, decay: float, step: jax.Array) -> nnx.State:
    """ema <- d * ema + (1 - d) * new, with d = min(decay, (1 + step) / (10 + step)): early steps, when the
    average would mostly remember the initialisation, weigh the new state more (TensorFlow's num_updates rule)."""
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return jax.tree.map(lambda e, m: d * e + (1.0 - d) * m, ema, new)


def train_step(
    graphs: Graphs,
    recipe: Recipe,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    keys: tuple[jax.Array, jax.Array | None],
    step: jax.Array,
) -> TrainState:
    """One optimizer step on one (global) batch; adds the batch's loss and correct count to the epoch sums.

    `keys` are the step's dropout and augmentation keys (the latter None without augmentation); `step` is the
    global step, which the moving average's warm-up reads.
    """
    dropout_key, augment_key = keys
    model, optimizer = graphs.merge(state)
    inputs = to_inputs(images)
    if augment_key is not None:
        inputs = augment.apply(inputs, augment_key, recipe.augment)
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, inputs, labels, dropout_key, recipe.label_smoothing)
    optimizer.update(model, grads)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    model_state = nnx.state(model)
    return TrainState(
        model=model_state,
        optimizer=nnx.state(optimizer),
        loss_sum=state.loss_sum + loss * labels.shape[0],
        correct_sum=state.correct_sum + correct,
        ema=None if state.ema is None else ema_update(state.ema, model_state, recipe.ema_decay, step),
    )


def epoch_permutation(data_key: jax.Array, epoch: int | jax.Array, n: int) -> jax.Array:
    """The order of epoch `epoch`: a pure function of (seed, epoch)."""
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), n)


@flax.struct.dataclass
class TrainInputs:
    """The arrays a train call reads: the training set on the devices, this epoch's order, the roots of the
    dropout and augmentation keys (the latter None without augmentation)."""

    images: jax.Array
    labels: jax.Array
    perm: jax.Array
    dropout_root: jax.Array
    augment_root: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What a compiled train call is specialised to (static under `jax.jit`)."""

    graphs: Graphs
    mesh: Mesh
    batch_size: int
    unroll: bool
    recipe: Recipe = Recipe()


def train_steps(
    spec: StepSpec,
    state: TrainState,
    inputs: TrainInputs,
    first_step: jax.Array,
    first_batch: jax.Array,
    *,
    num_steps: int,
) -> TrainState:
    """`num_steps` train steps in one program: step i trains on batch `first_batch + i` of `inputs.perm`.

    The data set lives on the devices; each batch is gathered inside the program and constrained to the
    "data" axis, so every device computes the gradient of its slice and XLA all-reduces the sum.
    """
    batch_sharding = parallel.data_sharding(spec.mesh)

    def body(state, i):
        idx = jax.lax.dynamic_slice_in_dim(inputs.perm, (first_batch + i) * spec.batch_size, spec.batch_size)
        x = jax.lax.with_sharding_constraint(inputs.images[idx], batch_sharding)
        y = jax.lax.with_sharding_constraint(inputs.labels[idx], batch_sharding)
        step = first_step + i
        keys = (
            jax.random.fold_in(inputs.dropout_root, step),
            None if inputs.augment_root is None else jax.random.fold_in(inputs.augment_root, step),
        )
        return train_step(spec.graphs, spec.recipe, state, x, y, keys, step), None

    if num_steps == 1:
        return body(state, 0)[0]
    return jax.lax.scan(body, state, jnp.arange(num_steps), unroll=spec.unroll)[0]


def eval_step(
    graphs: Graphs, recipe: Recipe, state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-example losses (0 where masked) and softmax probabilities of a (padded) batch, under the moving
    average of the weights when there is one; with `recipe.tta_flip`, the mean of the probabilities of each
    image and its mirror image (the loss is then that mean's cross-entropy).

    Both outputs stay split over the devices like the batch, so the program has no cross-device collective:
    independent evaluation programs in flight together can then never wait on each other (see `Programs`).
    """
    model = nnx.merge(graphs.model, state.model if state.ema is None else state.ema)
    inputs = to_inputs(images)
    if recipe.tta_flip:  # one forward pass over both halves: one program, one pass over the weights
        n = inputs.shape[0]
        both = jax.nn.softmax(model(jnp.concatenate([inputs, inputs[:, :, ::-1]])))
        probs = (both[:n] + both[n:]) / 2
        losses = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0])
        return jnp.where(mask, losses, 0.0), probs
    logits = model(inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.where(mask, losses, 0.0), jax.nn.softmax(logits)


# --------------------------------------------------------------------------------------------- programs


def resolve_unroll(setting: str, backend: str, conv: str = "auto") -> bool:
    """Whether a multi-step call unrolls its scan. "auto": rolled (compiles in a third of the time), except
    for XLA convolutions on CPU, which run ~15x slower inside an XLA:CPU while loop (benchmarks/)."""
    if setting == "auto":
        return backend == "cpu" and ops.resolve_conv(conv, backend) == "xla"
    return setting == "full"


class Programs:
    """The jitted functions of one run, the train call compiled once per distinct `num_steps`.

    Evaluation is many small programs dispatched asynchronously. On XLA:CPU every device's share of a program
    runs on one shared thread pool, and a cross-device collective blocks its thread until all devices arrive:
    with several such programs in flight, blocked shares of one can hold the threads that the rest of it needs
    (a deadlock that XLA aborts after 40 s). So the evaluation program returns per-example outputs, split
    like its inputs, and the host does the sums.
    """

    def __init__(self, graphs: Graphs, mesh: Mesh, batch_size: int, *, unroll: bool, recipe: Recipe = Recipe()):
        self.spec = StepSpec(graphs, mesh, batch_size, unroll, recipe)
        self.mesh = mesh
        split = parallel.data_sharding(mesh)
        self.eval = jax.jit(functools.partial(eval_step, graphs, recipe), out_shardings=(split, split))
        self.permutation = jax.jit(epoch_permutation, static_argnums=2, out_shardings=parallel.replicated(mesh))
        self._train: dict[int, Callable] = {}

    def train(self, num_steps: int) -> Callable:
        """The jitted `train_steps` for calls of `num_steps` steps: (state, inputs, first_step, first_batch)."""
        if num_steps not in self._train:
            fn = functools.partial(train_steps, self.spec, num_steps=num_steps)
            self._train[num_steps] = jax.jit(fn, donate_argnums=0)
        return self._train[num_steps]


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with zeros appended along its first axis up to `size`."""
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])


def evaluate_split(programs: Programs, state: TrainState, split: data.Split, *, batch_size: int) -> dict[str, Any]:
    """Loss, accuracy and probabilities over every image of `split`: fixed-size batches, the last padded.
    An empty split (validation_size=0: training on all 60k images) has no loss or accuracy: None."""
    n = len(split)
    if n == 0:
        return {"loss": None, "accuracy": None, "probs": np.zeros((0, data.NUM_CLASSES))}
    padded = math.ceil(n / batch_size) * batch_size
    images, labels, mask = _pad(split.images, padded), _pad(split.labels, padded), np.arange(padded) < n
    outputs = [
        programs.eval(
            state,
            *parallel.shard_batch(
                (images[s : s + batch_size], labels[s : s + batch_size], mask[s : s + batch_size]), programs.mesh
            ),
        )
        for s in range(0, padded, batch_size)
    ]
    losses, probs = (np.concatenate(parts)[:n] for parts in zip(*parallel.to_host(outputs), strict=True))
    return {
        "loss": float(np.sum(losses, dtype=np.float64) / n),
        "accuracy": float(np.mean(probs.argmax(-1) == split.labels)),
        "probs": probs,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def eval_batch_size(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
    """`config.eval_batch_size` (0: by backend) rounded up to a multiple of the device count."""
    n = mesh.devices.size
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    size = config.eval_batch_size or (AUTO_EVAL_BATCH_CPU if on_cpu else AUTO_EVAL_BATCH_ACCELERATOR)
    return math.ceil(size / n) * n


# --------------------------------------------------------------------------------------------- loop


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
    """What stays fixed while one run trains: its config, workdir, programs, data and step counts."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    programs: Programs
    dataset: data.Dataset
    steps_per_epoch: int
    total_steps: int
    every_steps: int
    eval_batch: int
    data_key: jax.Array
    events: events.EventWriter | None = None  # TensorBoard (the lead process, when enabled)

    def permutation(self, epoch: int) -> jax.Array:
        return self.programs.permutation(self.data_key, epoch, len(self.dataset.train))


def _progress(total: int, initial: int, desc: str):
    from tqdm import auto as tqdm

    return tqdm.tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        leave=False,
        file=sys.stderr,
        disable=not parallel.is_lead_process(),
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )


class EpochProgress:
    """The bookkeeping of the epoch under way: its index, first step, start time and progress bar."""

    def __init__(self, plan: Plan, step: int):
        self.index = step // plan.steps_per_epoch
        self.first_step = step
        self.start = time.perf_counter()
        self.bar = _progress(plan.steps_per_epoch, step % plan.steps_per_epoch, f"epoch {self.index + 1}")


def _check_finite(value: float, epoch: int, step: int, what: str) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"{what} became {value} in epoch {epoch + 1} (by step {step}). Training stopped: "
            "lower config.learning_rate or check the input data."
        )


def _write_history(workdir: pathlib.Path, records: list[dict[str, Any]]) -> None:
    """Rewrites history.jsonl whole and atomically: a crash or a full disk never leaves a torn line."""
    files.atomic_write_text(workdir / metrics.HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in records))


def _truncate_history(workdir: pathlib.Path, num_epochs: int) -> None:
    """Keeps the first `num_epochs` records, the lineage of the restored state; later ones are replayed."""
    records = metrics.read_history(workdir)
    if len(records) != num_epochs or any(r["epoch"] > num_epochs for r in records):
        _write_history(workdir, [r for r in records if r["epoch"] <= num_epochs])


def _end_of_epoch(
    plan: Plan, state: TrainState, epoch: EpochProgress, step: int
) -> tuple[TrainState, float, dict[str, Any]]:
    """Logs the epoch's train and validation metrics and appends them to history.jsonl; returns the state
    with its running sums reset, the epoch's seconds and the validation scores."""
    config, mesh = plan.config, plan.programs.mesh
    images = plan.steps_per_epoch * config.batch_size
    train_loss = parallel.scalar(state.loss_sum) / images  # waits for the steps
    train_acc = parallel.scalar(state.correct_sum) / images
    seconds = time.perf_counter() - epoch.start
    epoch.bar.close()
    _check_finite(train_loss, epoch.index, step, "the training loss")
    val = evaluate_split(plan.programs, state, plan.dataset.validation, batch_size=plan.eval_batch)
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
    logging.info(
        "epoch %d/%d  loss %.4f  acc %.4f  val_loss %s  val_acc %s  %.1f s  %.0f img/s  ETA %s",
        epoch.index + 1,
        config.num_epochs,
        train_loss,
        train_acc,
        _fmt(val["loss"]),
        _fmt(val["accuracy"]),
        seconds,
        record["images_per_second"],
        time.strftime("%H:%M:%S", time.gmtime(eta)),
    )
    if parallel.is_lead_process():
        _write_history(plan.workdir, [*metrics.read_history(plan.workdir), record])
    if plan.events:
        plan.events.epoch(record, learning_rate=learning_rate_at(config, plan.steps_per_epoch, step - 1))
    zeros = parallel.replicate((np.float32(0), np.float32(0)), mesh)  # two buffers: the state is donated
    return state.replace(loss_sum=zeros[0], correct_sum=zeros[1]), seconds, val


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, mesh: Mesh | None = None
) -> dict[str, Any]:
    """Trains `config`'s CNN in `workdir` (resuming from its latest checkpoint), evaluates it, writes
    `config.json`, `history.jsonl`, `results.json` and the test predictions; returns the results dict."""
    workdir = pathlib.Path(workdir)
    lead = parallel.is_lead_process()

    # ---- mesh
    mesh = mesh or parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    if lead:
        config_lib.save_or_check(config, workdir)
    backend = jax.default_backend()
    logging.info(
        "Mesh: %d %s device(s) over %d process(es), batch %d (%d per device)",
        mesh.devices.size,
        backend,
        jax.process_count(),
        config.batch_size,
        config.batch_size // mesh.devices.size,
    )

    # ---- input
    dataset = data.load(config.data, seed=config.seed)
    n_train = len(dataset.train)
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"config.batch_size={config.batch_size} exceeds the {n_train} training images; lower it or raise "
            "config.data.num_train."
        )
    logging.info(
        "Data from %s: %d train, %d validation, %d test images; %d steps/epoch",
        dataset.source,
        n_train,
        len(dataset.validation),
        len(dataset.test),
        steps_per_epoch,
    )

    # ---- state, checkpoint
    graphs, state, num_params = create_train_state(config, steps_per_epoch)
    state = parallel.replicate(state, mesh)
    store = checkpoints.CheckpointStore(
        workdir / "checkpoints",
        max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save,
        atomicity=config.checkpoint.atomicity,
    )
    step, train_seconds = 0, 0.0
    restored = store.restore_latest(state)
    if restored is not None:
        state, meta = restored
        step, train_seconds = meta["step"], meta["train_seconds"]
        logging.info(
            "Resumed from checkpoint at step %d (epoch %d, %d/%d steps into it)",
            step,
            step // steps_per_epoch + 1,
            step % steps_per_epoch,
            steps_per_epoch,
        )
        if step >= steps_per_epoch * config.num_epochs and (workdir / metrics.RESULTS_FILE).exists():
            store.close()
            logging.info("Run already finished (%d steps); reporting %s", step, workdir / metrics.RESULTS_FILE)
            return metrics.load_results(workdir)
    if lead:  # the history is the lineage of the state training goes on from, even a fresh one
        _truncate_history(workdir, step // steps_per_epoch)
    writer = None
    if lead and config.tensorboard.enabled:
        writer = events.EventWriter(
            workdir,
            restored_step=step,
            loss_every_steps=config.tensorboard.loss_every_steps,
        )

    root = jax.random.key(config.seed)
    data_key, dropout_root = jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)
    recipe = Recipe.from_config(config)
    augment_root = jax.random.fold_in(root, 3) if recipe.augment.enabled else None
    unroll = resolve_unroll(config.scan_unroll, backend, config.model.conv)
    plan = Plan(
        config=config,
        workdir=workdir,
        programs=Programs(graphs, mesh, config.batch_size, unroll=unroll, recipe=recipe),
        dataset=dataset,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.num_epochs,
        every_steps=config.checkpoint.every_steps or steps_per_epoch,
        eval_batch=eval_batch_size(config, mesh),
        data_key=data_key,
        events=writer,
    )

    with contextlib.ExitStack() as cleanup:
        if writer:
            cleanup.callback(writer.close)
        # ---- train
        last_val = None  # the final state's validation scores, once the last epoch has computed them
        train_images, train_labels = parallel.replicate((dataset.train.images, dataset.train.labels), mesh)
        epoch = EpochProgress(plan, step)
        if step < plan.total_steps:
            inputs = TrainInputs(train_images, train_labels, plan.permutation(epoch.index), dropout_root, augment_root)
        try:
            with checkpoints.PreemptionGuard() as guard:
                for n in chunks(step, plan.total_steps, steps_per_epoch, config.steps_per_call, plan.every_steps):
                    state = plan.programs.train(n)(state, inputs, jnp.int32(step), jnp.int32(step % steps_per_epoch))
                    step += n
                    epoch.bar.update(n)
                    if plan.events:
                        images_in_epoch = ((step - 1) % steps_per_epoch + 1) * config.batch_size
                        plan.events.steps_done(step, images_in_epoch, state.loss_sum)
                    if step % steps_per_epoch == 0:
                        state, seconds, last_val = _end_of_epoch(plan, state, epoch, step)
                        train_seconds += seconds
                        if step < plan.total_steps:
                            epoch = EpochProgress(plan, step)
                            inputs = inputs.replace(perm=plan.permutation(epoch.index))
                    if step % plan.every_steps == 0 or step == plan.total_steps or guard.signal:
                        meta = {
                            "step": step,
                            "epoch": step // steps_per_epoch,
                            "train_seconds": train_seconds,
                            "config": config_lib.to_dict(config),
                        }
                        if plan.events:  # the points up to a checkpoint are on disk before it
                            plan.events.flush()
                        store.save(step, state, meta)
                    if guard.signal:
                        store.wait()
                        raise errors.Interrupted(guard.signal, step, store.directory)
        finally:
            epoch.bar.close()
            store.close()
        # ---- evaluate
        return finish(plan, state, num_params=num_params, train_seconds=train_seconds, val=last_val)


def params_sha256(state: TrainState) -> str:
    """A fingerprint of the exact bits of the model state (and of its moving average, when there is one):
    equal fingerprints, bit-identical models."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(parallel.to_host((state.model, state.ema))):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def finish(
    plan: Plan, state: TrainState, *, num_params: int, train_seconds: float, val: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Scores the trained state on validation (unless `val` already holds its scores) and test; writes
    results.json and predictions.npz."""
    config, dataset = plan.config, plan.dataset
    if val is None:
        val = evaluate_split(plan.programs, state, dataset.validation, batch_size=plan.eval_batch)
    start = time.perf_counter()
    test = evaluate_split(plan.programs, state, dataset.test, batch_size=plan.eval_batch)
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
        num_predicted=len(dataset.test),
        seed=config.seed,
        checksums=dataset.checksums,
        extra={"test_loss": test["loss"], "validation_loss": val["loss"], "params_sha256": params_sha256(state)},
    )
    if parallel.is_lead_process():  # predictions first: results.json marks the run finished
        metrics.save_predictions(
            plan.workdir, labels=dataset.test.labels, preds=preds, probs=test["probs"], images=dataset.test.images
        )
        metrics.save_results(plan.workdir, results)
    if plan.events:
        plan.events.finish(results, config_lib.to_dict(config), step=plan.total_steps)
    logging.info("test accuracy %.4f  (validation %s)", results["test_accuracy"], _fmt(val["accuracy"]))
    return results


# --------------------------------------------------------------------------------------------- use a checkpoint


def restore_for_inference(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh: Mesh
) -> tuple[Programs, TrainState, int, dict[str, Any]]:
    """The programs and the state of checkpoint `config.checkpoint.step` (None: the latest valid one)."""
    graphs, state, num_params = create_train_state(config)
    store = checkpoints.CheckpointStore(
        workdir / "checkpoints",
        max_to_keep=config.checkpoint.max_to_keep,
        async_save=False,
        atomicity=config.checkpoint.atomicity,
    )
    try:
        restored = store.restore_latest(parallel.replicate(state, mesh), step=config.checkpoint.step)
    finally:
        store.close()
    if restored is None:
        raise checkpoints.CheckpointError(
            f"no checkpoint in {workdir / 'checkpoints'}: train first "
            f"(python main.py --config=configs/cnn.py --workdir={workdir})."
        )
    state, meta = restored
    logging.info("Using checkpoint at step %d", meta["step"])
    programs = Programs(graphs, mesh, config.batch_size, unroll=False, recipe=Recipe.from_config(config))
    return programs, state, num_params, meta


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Scores a checkpoint on the validation and test sets (mode=evaluate): the latest one into the workdir's
    results.json and predictions.npz; the one `config.checkpoint.step` names into WORKDIR/evaluate_step_N/, so
    that the run's own results (what a rerun and the comparison report read) stay those of its last step."""
    workdir = pathlib.Path(workdir)
    mesh = parallel.make_mesh()
    programs, state, num_params, meta = restore_for_inference(config, workdir, mesh)
    out = workdir if config.checkpoint.step is None else workdir / f"evaluate_step_{meta['step']}"
    dataset = data.load(config.data, seed=config.seed)
    logging.info("Evaluating on %d %s device(s) into %s", mesh.devices.size, jax.default_backend(), out)
    if parallel.is_lead_process():
        out.mkdir(exist_ok=True)
    plan = Plan(
        config=config,
        workdir=out,
        programs=programs,
        dataset=dataset,
        steps_per_epoch=0,
        total_steps=0,
        every_steps=0,
        eval_batch=eval_batch_size(config, mesh),
        data_key=jax.random.key(config.seed),
    )
    return finish(plan, state, num_params=num_params, train_seconds=meta["train_seconds"])


def predict_images(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 10) of uint8 images (N, 28, 28) under a checkpoint (mode=predict)."""
    workdir = pathlib.Path(workdir)
    mesh = parallel.make_mesh()
    programs, state, _, _ = restore_for_inference(config, workdir, mesh)
    split = data.Split(images, np.zeros(len(images), np.int32))
    return evaluate_split(programs, state, split, batch_size=eval_batch_size(config, mesh))["probs"]
