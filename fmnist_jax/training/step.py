"""The jitted programs of a run: the loss, one train step, `steps_per_call` steps scanned in one call, the
evaluation step.

The training set lives on the devices; each batch is gathered inside the program from this epoch's order and
constrained to the mesh's "data" axis, so every device computes the gradient of its slice and XLA all-reduces
the sum. Dropout and augmentation keys are folded from the global step, so a step's randomness is a pure
function of (seed, step, position in the global batch).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from fmnist_jax import augment, ops, parallel
from fmnist_jax.training.state import Graphs, Recipe, TrainState, ema_update


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
    recipe: Recipe


def train_steps(
    spec: StepSpec,
    state: TrainState,
    inputs: TrainInputs,
    first_step: jax.Array,
    first_batch: jax.Array,
    *,
    num_steps: int,
) -> TrainState:
    """`num_steps` train steps in one program: step i trains on batch `first_batch + i` of `inputs.perm`."""
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


def tta_views(inputs: jax.Array, recipe: Recipe) -> jax.Array:
    """(N, V, 28, 28, 1): each input's test-time views, the input first; with `recipe.tta_flip`, its mirror image;
    with `recipe.tta_shift` = s, each of those shifted s pixels up, then each shifted s pixels down (zero fill)."""
    flips = [inputs, inputs[:, :, ::-1]] if recipe.tta_flip else [inputs]
    views = list(flips)
    if s := recipe.tta_shift:
        fill = jnp.zeros_like(inputs[:, :s])
        views += [jnp.concatenate([v[:, s:], fill], axis=1) for v in flips]
        views += [jnp.concatenate([fill, v[:, :-s]], axis=1) for v in flips]
    return jnp.stack(views, axis=1)


def eval_step(
    graphs: Graphs, recipe: Recipe, state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-example losses (0 where masked) and softmax probabilities of a (padded) batch, under the moving
    average of the weights when there is one; with test-time views (`recipe.tta_flip`, `recipe.tta_shift`:
    `tta_views`), the mean of the views' probabilities (the loss is then that mean's cross-entropy).

    Both outputs stay split over the devices like the batch, so the program has no cross-device collective:
    independent evaluation programs in flight together can then never wait on each other (see `Programs`).
    """
    model = nnx.merge(graphs.model, state.model if state.ema is None else state.ema)
    inputs = to_inputs(images)
    if recipe.tta_flip or recipe.tta_shift:  # one forward pass over every view: one program, one pass over the weights
        # Each image beside its views, [x0, v0, ..., x1, v1, ...]: the devices' split of the batch stays where it is
        # (each device holds its own images' views), where a concatenation along the split axis moved images between
        # them (an all-gather and a collective-permute, which deadlocked evaluations in flight together on CPUs).
        views = tta_views(inputs, recipe)
        n, v = views.shape[:2]
        logits = model(views.reshape(n * v, *inputs.shape[1:])).reshape(n, v, -1)
        each, logp = jax.nn.softmax(logits), jax.nn.log_softmax(logits)
        probs = functools.reduce(jnp.add, (each[:, i] for i in range(v))) / v
        # log(probs), finite where every view's probability underflows
        log_mean = functools.reduce(jnp.logaddexp, (logp[:, i] for i in range(v))) - jnp.log(float(v))
        losses = -jnp.take_along_axis(log_mean, labels[:, None], axis=-1)[:, 0]
        return jnp.where(mask, losses, 0.0), probs
    logits = model(inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.where(mask, losses, 0.0), jax.nn.softmax(logits)


def resolve_unroll(setting: str, backend: str, conv: str = "auto") -> bool:
    """Whether a multi-step call unrolls its scan. "auto": rolled (compiles in a third of the time), except
    for XLA convolutions on CPU, which run ~15x slower inside an XLA:CPU while loop
    (docs/history.md#the-speed-work-on-the-study-cnn)."""
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

    `compile_ahead` compiles a run's programs before its training starts, all at once in threads: the epochs'
    seconds then hold no compilation, and the compilations overlap (XLA's compiler releases the interpreter lock).
    """

    def __init__(self, graphs: Graphs, mesh: Mesh, batch_size: int, *, unroll: bool, recipe: Recipe):
        self.spec = StepSpec(graphs, mesh, batch_size, unroll, recipe)
        self.mesh = mesh
        split = parallel.data_sharding(mesh)
        self.eval = jax.jit(functools.partial(eval_step, graphs, recipe), out_shardings=(split, split))
        self.permutation = jax.jit(epoch_permutation, static_argnums=2, out_shardings=parallel.replicated(mesh))
        # A copy of the state in new buffers (the next train call donates the state itself): what a checkpoint saves
        # while training goes on. Jitted, as every process of a multi-process run holds only its own shards.
        self.copy: Callable[[TrainState], TrainState] = jax.jit(lambda state: jax.tree.map(jnp.copy, state))
        self._train: dict[int, Callable] = {}
        self._compiled_eval: dict[int, Callable] = {}

    def train(self, num_steps: int) -> Callable:
        """The jitted `train_steps` for calls of `num_steps` steps: (state, inputs, first_step, first_batch)."""
        if num_steps not in self._train:
            fn = functools.partial(train_steps, self.spec, num_steps=num_steps)
            self._train[num_steps] = jax.jit(fn, donate_argnums=0)
        return self._train[num_steps]

    def evaluate(
        self, state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """`eval` on one (padded) batch, through the program `compile_ahead` compiled for its size if there is one."""
        compiled = self._compiled_eval.get(images.shape[0])
        return (compiled or self.eval)(state, images, labels, mask)

    def compile_ahead(
        self, state: TrainState, inputs: TrainInputs, sizes: Iterable[int], *, eval_batch: int | None = None
    ) -> None:
        """Compiles the train calls of `sizes` steps from `state` on `inputs`, the state's copy and, with
        `eval_batch`, the evaluation program for batches of that many images, concurrently; `train(n)`, `copy` and
        `evaluate` then call them (the programs the jitted functions would compile at their first call: the same
        numbers)."""
        step = jnp.int32(0)  # lowered here, in this thread: tracing holds the interpreter lock anyway
        lowered: dict[Any, Any] = {n: self.train(n).lower(state, inputs, step, step) for n in sorted(set(sizes))}
        if eval_batch is not None:
            split = parallel.data_sharding(self.mesh)
            batch = (
                jax.ShapeDtypeStruct((eval_batch, *inputs.images.shape[1:]), inputs.images.dtype, sharding=split),
                jax.ShapeDtypeStruct((eval_batch,), inputs.labels.dtype, sharding=split),
                jax.ShapeDtypeStruct((eval_batch,), jnp.bool_, sharding=split),
            )
            lowered["eval"] = self.eval.lower(state, *batch)
        lowered["copy"] = self.copy.lower(state)
        with concurrent.futures.ThreadPoolExecutor(len(lowered), thread_name_prefix="compile") as pool:
            done = {key: pool.submit(program.compile) for key, program in lowered.items()}
            compiled = {key: future.result() for key, future in done.items()}
        self.copy = compiled.pop("copy")
        if "eval" in compiled:
            self._compiled_eval[eval_batch] = compiled.pop("eval")
        self._train.update(compiled)


class CallQueue:
    """Keeps at most `DEPTH` train calls queued, where `mark` (a jitted copy) is given. The host dispatches far
    faster than the calls run: unbounded, it queues a whole epoch, and a signal can stop the run only at the epoch's
    end. Each call's mark is `mark` of its loss sum (the next call donates the state itself)."""

    DEPTH = 2

    def __init__(self, mark: Callable[[jax.Array], jax.Array] | None) -> None:
        self.mark, self.marks = mark, collections.deque()

    def queued(self, state: TrainState) -> None:
        """After a train call is dispatched: waits for the calls before the last `DEPTH` - 1 (with 2, the one before
        it) to have run, so that no more than `DEPTH` are ever queued."""
        if self.mark is not None:
            self.marks.append(self.mark(state.loss_sum))
            if len(self.marks) == self.DEPTH:
                jax.block_until_ready(self.marks.popleft())
