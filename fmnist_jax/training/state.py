"""The train state and the recipe: the model and optimizer as one pytree, the optimizer and its schedule, the
moving average of the weights, the random roots of a run, and the checks of a CNN config's training fields.

The model is an `nnx.Module` and the optimizer an `nnx.Optimizer`; both are split once into a pure pytree
(`TrainState`) that `jax.jit`, `jax.lax.scan`, the mesh shardings and Orbax all handle as plain arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from fmnist_jax import augment, checks, compile_cache, models, ops, parallel
from fmnist_jax.errors import ConfigError

UNROLL_CHOICES = ("auto", "full", "rolled")
HOST_OVERLAP_CHOICES = ("auto", "on", "off")
SCHEDULES = ("constant", "warmup_cosine")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first CNN config field whose value cannot run."""
    checks.positive(config, "num_epochs", "batch_size", "learning_rate", "steps_per_call", "checkpoint.max_to_keep")
    checks.seed(config)
    checks.positive(
        config,
        *("checkpoint.every_steps", "data.validation_size", "eval_batch_size", "tensorboard.loss_every_steps"),
        allow_zero=True,
    )
    if config.scan_unroll not in UNROLL_CHOICES:
        raise ConfigError(f"config.scan_unroll={config.scan_unroll!r} must be one of {UNROLL_CHOICES}.")
    if config.host_overlap not in HOST_OVERLAP_CHOICES:
        raise ConfigError(f"config.host_overlap={config.host_overlap!r} must be one of {HOST_OVERLAP_CHOICES}.")
    compile_cache.check(config.compilation_cache)
    if config.model.conv not in ops.CONV_IMPLS:
        raise ConfigError(f"config.model.conv={config.model.conv!r} must be one of {ops.CONV_IMPLS}.")
    checks.positive(config, "weight_decay", "augment.translate", "schedule.warmup_epochs", "tta_shift", allow_zero=True)
    if config.schedule.name not in SCHEDULES:
        raise ConfigError(f"config.schedule.name={config.schedule.name!r} must be one of {SCHEDULES}.")
    checks.fraction(config, "label_smoothing", "ema_decay", "augment.erase_prob", note=" (0 turns it off)")
    for field in ("augment.translate", "tta_shift"):
        if (pixels := checks.get(config, field)) >= 14:
            raise ConfigError(f"config.{field}={pixels} must be below 14 pixels.")
    _check_model_and_adam(config)
    try:  # the model's fields (name, widths, compute dtype, ...): built abstractly, nothing allocated
        nnx.eval_shape(lambda: models.create_model(config.model.name, seed=0, **model_kwargs(config)))
    except TypeError as e:
        raise ConfigError(f"config.model does not fit model {config.model.name!r}: {e}.") from e


def _check_model_and_adam(config: ml_collections.ConfigDict) -> None:
    """The model's and Adam's numbers in their ranges (JAX would fail at the first step, or train on silently)."""
    m = config.model
    for field in ("widths", "depths"):
        values = m.get(field)
        if values is not None and not (values and all(isinstance(v, int) and v > 0 for v in values)):
            raise ConfigError(f"config.model.{field}={values!r} must be positive integers, one per stage.")
    if "head_width" in m:
        checks.positive(config, "model.head_width", allow_zero=True)
    checks.positive(config, "adam.eps")
    checks.fraction(config, "adam.b1", "adam.b2", *(["model.dropout"] if "dropout" in m else []))


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
    tta_shift: int = 0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Recipe:
        a = config.augment
        return cls(
            label_smoothing=float(config.label_smoothing),
            augment=augment.Augment(flip=bool(a.flip), translate=int(a.translate), erase_prob=float(a.erase_prob)),
            ema_decay=float(config.ema_decay),
            tta_flip=bool(config.tta_flip),
            tta_shift=int(config.tta_shift),
        )


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The static halves of `nnx.split`: how to turn a `TrainState` back into modules."""

    model: Any
    optimizer: Any

    def merge(self, state: TrainState) -> tuple[nnx.Module, nnx.Optimizer]:
        model = nnx.merge(self.model, state.model)
        return model, nnx.merge(self.optimizer, state.optimizer)


@dataclasses.dataclass(frozen=True)
class RandomRoots:
    """The roots every random draw of a run folds from, all from `config.seed`: the epoch-e order is
    permutation(fold_in(data, e)); step t's dropout and augmentation keys are fold_in(dropout, t) and
    fold_in(augment, t). Resuming at any step therefore replays exactly."""

    data: jax.Array
    dropout: jax.Array
    augment: jax.Array | None  # None without augmentation

    @classmethod
    def from_seed(cls, seed: int, *, augment: bool) -> RandomRoots:
        return cls(*_roots(seed, augment))


@functools.partial(jax.jit, static_argnums=1)
def _roots(seed: int, augment: bool) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """`RandomRoots`' keys, folded in one program (the same bits as op by op; one compilation, not three)."""
    root = jax.random.key(seed)
    return jax.random.fold_in(root, 1), jax.random.fold_in(root, 2), jax.random.fold_in(root, 3) if augment else None


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> float | optax.Schedule:
    """`config.learning_rate`, constant (the study) or with a linear warm-up and a cosine decay to zero."""
    if config.schedule.name == "constant":
        return config.learning_rate
    total = max(steps_per_epoch * config.num_epochs, 1)
    warmup = min(round(config.schedule.warmup_epochs * steps_per_epoch), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, total, end_value=0.0)


def learning_rates_at(config: ml_collections.ConfigDict, steps_per_epoch: int, steps: Sequence[int]) -> np.ndarray:
    """The learning rates that `steps` use, computed at once (a schedule is a device computation: the training
    loop asks for them all before its steps are queued, not behind them), as one program (op by op, a schedule
    compiled a dozen in every new process)."""
    rate = _jitted_schedule(optimizer_fields(config), steps_per_epoch)
    if not callable(rate):
        return np.full(len(steps), rate, np.float64)
    return np.asarray(rate(np.asarray(steps, np.int32)), np.float64)


# What the optimizer and its schedule read of a config: the key of the programs that build them (a field read but
# not listed here is missing from `optimizer_fields`' result: the oversight fails loudly where it is read, never
# silently).
OPTIMIZER_FIELDS = ("learning_rate", "schedule", "num_epochs", "adam", "weight_decay")


def optimizer_fields(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The fields of `config` the optimizer and its schedule read, hashable (a cache key)."""
    return ml_collections.FrozenConfigDict({name: config[name] for name in OPTIMIZER_FIELDS})


@functools.lru_cache(maxsize=32)
def _jitted_schedule(fields: ml_collections.FrozenConfigDict, steps_per_epoch: int) -> float | Callable:
    """The schedule as one jitted program, one per optimizer fields and epoch length in a process; a constant
    rate as it is."""
    rate = learning_rate_schedule(fields, steps_per_epoch)
    return jax.jit(rate) if callable(rate) else rate


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
    optimizer, zero, ema = _initialiser(optimizer_fields(config), steps_per_epoch, config.ema_decay > 0)(model)
    model_graph, model_state = nnx.split(model)
    opt_graph, opt_state = nnx.split(optimizer)
    state = TrainState(model=model_state, optimizer=opt_state, loss_sum=zero, correct_sum=zero, ema=ema)
    return Graphs(model_graph, opt_graph), state, models.count_params(model)


def abstract_train_state(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> tuple[Graphs, TrainState, int]:
    """`create_train_state`'s graphs, state as shapes and dtypes only, and number of parameters: nothing is
    initialised or compiled (a restore's target, whose values the checkpoint's replace; a step traced for its
    FLOPs)."""
    found = []

    def create() -> TrainState:
        graphs, state, num_params = create_train_state(config, steps_per_epoch)
        found.append((graphs, num_params))
        return state

    state = jax.eval_shape(create)
    ((graphs, num_params),) = found
    return graphs, state, num_params


@functools.lru_cache(maxsize=32)
def _initialiser(fields: ml_collections.FrozenConfigDict, steps_per_epoch: int, with_ema: bool) -> Callable:
    """The jitted `model -> (optimizer, zero sum, moving average's start or None)`, one per optimizer fields in a
    process (a model of another structure traces it again). As one program: built op by op, they compiled a program
    per parameter shape (a dozen for the study's CNN) in every new process."""
    tx = make_optimizer(fields, steps_per_epoch)

    @nnx.jit
    def initialise(model: nnx.Module) -> tuple[nnx.Optimizer, jax.Array, nnx.State | None]:
        ema = jax.tree.map(jnp.copy, nnx.state(model)) if with_ema else None
        return nnx.Optimizer(model, tx, wrt=nnx.Param), jnp.zeros((), jnp.float32), ema

    return initialise


def ema_update(ema: nnx.State, new: nnx.State, decay: float, step: jax.Array) -> nnx.State:
    """ema <- d * ema + (1 - d) * new, with d = min(decay, (1 + step) / (10 + step)): early steps, when the
    average would mostly remember the initialisation, weigh the new state more (TensorFlow's num_updates rule)."""
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return jax.tree.map(lambda e, m: d * e + (1.0 - d) * m, ema, new)


def params_sha256(state: TrainState) -> str:
    """A fingerprint of the exact bits of the model state (and of its moving average, when there is one):
    equal fingerprints, bit-identical models."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(parallel.to_host((state.model, state.ema))):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()
