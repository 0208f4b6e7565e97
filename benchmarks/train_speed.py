r"""The study CNN's training speed: this repository's loop against the plain Flax loop and the PyTorch twin.

    python -m benchmarks train_speed                      # make bench
    python -m benchmarks train_speed --steps=300
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks train_speed

One JSON line per loop, then one with the ratios of their step times to this repository's (per round, and their
median):
- `fmnist_jax`: the package's own jitted call (`Programs.train`), `config.steps_per_call` steps per call in a
  `lax.scan`, the training set on the devices, the config's convolution form;
- `plain_flax`: the same CNN written the plain way (`nnx.Conv`, `nnx.max_pool`, `nnx.Dropout`) and trained as
  Flax's examples/mnist does, one `nnx.jit` call per step on a batch sent from the host;
- `pytorch`: the same layers, Adam and batch in eager PyTorch, when torch is importable (it is not a dependency of
  this repository; the line says it was skipped otherwise).
Each is compiled (or warmed up) first, then the loops train in turn at configs/cnn.py's batch (64), `--steps` steps
each (down to the project's whole calls, one at least; the same for all), for `--rounds` rounds, each round starting
one loop further along; a loop's line gives the median over the rounds and each round's, its compile seconds beside
them. On the real data when installed (random images otherwise); `epoch_seconds` scales the step time to an epoch of
the config's training split. `--config.FIELD=VALUE` overrides configs/cnn.py (the plain loops keep the study's
layers). The machine may be shared: compare the ratios of one run, not milliseconds across runs.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks import common
from fmnist_jax import models, ops
from fmnist_jax.timing import compile_clock

STUDY_PARAMS = 438_026


def process_peak_host_memory_mb() -> int:
    """The process's peak resident memory so far (`ru_maxrss` only grows): the loops' together, not one's."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class PlainCNN(nnx.Module):
    """The study's CNN written the plain way (nnx.Conv, nnx.max_pool, nnx.Dropout with its own RNG stream)."""

    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.glorot_uniform()
        self.c1 = nnx.Conv(1, 64, (3, 3), padding="VALID", kernel_init=init, rngs=rngs)
        self.c2 = nnx.Conv(64, 128, (3, 3), padding="VALID", kernel_init=init, rngs=rngs)
        self.c3 = nnx.Conv(128, 256, (3, 3), padding="VALID", kernel_init=init, rngs=rngs)
        self.d1 = nnx.Linear(256, 256, kernel_init=init, rngs=rngs)
        self.d2 = nnx.Linear(256, 10, kernel_init=init, rngs=rngs)
        self.drops = nnx.List([nnx.Dropout(r, rngs=rngs) for r in (0.25, 0.25, 0.4, 0.3)])

    def __call__(self, x):
        def pool(y):
            return nnx.max_pool(y, (2, 2), (2, 2))

        x = self.drops[0](pool(jax.nn.leaky_relu(self.c1(x), 0.1)))
        x = self.drops[1](pool(jax.nn.elu(self.c2(x), 0.1)))
        x = self.drops[2](pool(jax.nn.leaky_relu(self.c3(x), 0.1)))
        x = self.drops[3](jax.nn.elu(self.d1(x.reshape(x.shape[0], -1)), 0.1))
        return self.d2(x)


def host_batches(train, batch: int):
    """Batch i of `train` (consecutive slices, wrapping), as NumPy arrays on the host."""
    n = max(len(train) - batch, 1)

    def get(i: int):
        start = i * batch % n
        return train.images[start : start + batch], train.labels[start : start + batch]

    return get


def plain_flax(train, *, batch: int) -> tuple[float, float, Callable[[int], float]]:
    """Flax's examples/mnist loop, one `nnx.jit` call per step, compiled by its first call: (that call's seconds,
    the compilation's inside it, `timed(steps)`, which runs `steps` more and returns the seconds per step)."""
    model = PlainCNN(nnx.Rngs(0, dropout=1))
    assert models.count_params(model) == STUDY_PARAMS
    optimizer = nnx.Optimizer(model, optax.adam(1e-3, eps=1e-7), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, images, labels):
        def loss_fn(model):
            logits = model(jnp.asarray(images, jnp.float32)[..., None] / 255.0)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    batches = host_batches(train, batch)
    with compile_clock() as clock:  # as the project's first call is timed (`common.time_training`)
        start = time.perf_counter()
        jax.block_until_ready(step(model, optimizer, *batches(0)))
        first = time.perf_counter() - start

    def timed(steps: int) -> float:
        start = time.perf_counter()
        for i in range(1, steps + 1):
            loss = step(model, optimizer, *batches(i))
        jax.block_until_ready(loss)
        return (time.perf_counter() - start) / steps

    return first, clock.seconds, timed


def pytorch(train, *, batch: int) -> tuple[Callable[[int], float], dict] | None:
    """The PyTorch eager twin after 5 warm-up steps: (`timed(steps)`, the seconds per step of `steps` more; its
    versions), or None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        *(nn.Conv2d(1, 64, 3), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Dropout(0.25)),
        *(nn.Conv2d(64, 128, 3), nn.ELU(0.1), nn.MaxPool2d(2), nn.Dropout(0.25)),
        *(nn.Conv2d(128, 256, 3), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Dropout(0.4)),
        *(nn.Flatten(), nn.Linear(256, 256), nn.ELU(0.1), nn.Dropout(0.3), nn.Linear(256, 10)),
    )
    assert sum(p.numel() for p in net.parameters()) == STUDY_PARAMS
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    batches = host_batches(train, batch)

    def step(i: int) -> None:
        images, labels = batches(i)
        opt.zero_grad(set_to_none=True)
        x = torch.from_numpy(images).float().div_(255).unsqueeze(1)
        nn.functional.cross_entropy(net(x), torch.from_numpy(labels).long()).backward()
        opt.step()

    for i in range(5):
        step(i)

    def timed(steps: int) -> float:
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        return (time.perf_counter() - start) / steps

    return timed, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def conv_in_training(config) -> str:
    """The training convolutions `model.conv` resolves to on this backend, the one-channel first layer's named apart
    where it differs (bfloat16 on CPU: "taps (im2col for one input channel)")."""
    first, rest = ops.training_forms(config.model.conv, mixed=config.compute_dtype != "float32")
    return rest if first == rest else f"{rest} ({first} for one input channel)"


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("train_speed", __doc__)
    parser.add_argument("--steps", type=int, default=100, help="timed train steps per loop and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the loops in turn; each line: their median")
    args, overrides = common.parse(parser, argv)
    common.check_at_least(parser, args, "steps", "rounds")
    with common.usage_errors(parser):
        config = common.cnn_config("cnn", overrides["config"])
    arrays = common.load_arrays(config)
    batch, epoch_steps = config.batch_size, len(arrays.train) // config.batch_size
    ours_run = common.trainer(config, arrays.train)
    first_timing = common.time_training(config, arrays.train, steps=args.steps, run=ours_run)  # compiles
    steps = first_timing.steps  # whole calls of steps_per_call: every loop times as many
    plain_first, plain_compile, plain_timed = plain_flax(arrays.train, batch=batch)
    torch_run = pytorch(arrays.train, batch=batch)
    loops = {
        "fmnist_jax": lambda: common.time_training(config, arrays.train, steps=steps, run=ours_run).step_seconds,
        "plain_flax": lambda: plain_timed(steps),
    }
    if torch_run is not None:
        loops["pytorch"] = lambda: torch_run[0](steps)
    times: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for round_ in range(args.rounds):  # in turn, each round starting one further along: drift spread over all
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            times[name].append(loops[name]())
    median = {name: statistics.median(t) for name, t in times.items()}

    def line(name: str, **fields) -> None:
        per_round = [round(1000 * t, 2) for t in times[name]]
        common.emit(
            loop=name,
            **common.speed_fields(median[name], batch, epoch_steps),
            **fields,
            steps=steps,
            rounds=args.rounds,
            ms_per_step_per_round=per_round,
            data=arrays.source,
        )

    line(
        "fmnist_jax",
        first_call_seconds=round(first_timing.first_call_seconds, 2),
        compile_seconds=round(first_timing.compile_seconds, 2),
        steps_per_call=config.steps_per_call,
        conv=conv_in_training(config),
        num_params=first_timing.num_params,
    )
    line("plain_flax", first_call_seconds=round(plain_first, 2), compile_seconds=round(plain_compile, 2))
    if torch_run is None:
        common.emit(loop="pytorch", skipped="torch is not installed (not a dependency of this repository)")
    else:
        line("pytorch", **torch_run[1])
    per_round = {  # each round's own: a machine's drift between rounds cancels
        f"{name}_over_fmnist_jax": [t / ours for t, ours in zip(times[name], times["fmnist_jax"], strict=True)]
        for name in names
        if name != "fmnist_jax"
    }
    common.emit(
        ratios={name: round(statistics.median(r), 2) for name, r in per_round.items()},
        per_round={name: [round(x, 2) for x in r] for name, r in per_round.items()},
        of="time per step relative to this repository's loop in the same round; the median over the rounds",
        process_peak_host_memory_mb=process_peak_host_memory_mb(),
    )
