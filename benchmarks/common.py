"""What every benchmark shares: the command line (a config by name with `--config.FIELD=VALUE` overrides, parsed
as main.py parses them), the arrays to train on, the timing of train steps through the package's own `Programs`
and `TrainInputs`, the compile clock, and the JSON lines, each with the machine it was measured on.

Run from the repository root: `python -m benchmarks NAME`, so that `configs` and `fmnist_jax` import as they
do for main.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import json
import os
import pathlib
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import Mesh
from ml_collections import config_flags

from fmnist_jax import config_lib, data, flag_errors, machine, metrics, parallel
from fmnist_jax.errors import ConfigError
from fmnist_jax.timing import compile_clock
from fmnist_jax.training import state as state_lib
from fmnist_jax.training.state import RandomRoots, TrainState
from fmnist_jax.training.step import Programs, TrainInputs, resolve_unroll

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_FILE_IMAGES, TEST_IMAGES = 60_000, 10_000  # the official files, before the validation split


class UsageError(Exception):
    """A command line that cannot run: reported as one usage line, exit status 2, before anything is timed."""


# The command line


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A sub-command's parser: its docstring as the help, no abbreviated flags (`--config.` overrides pass by)."""
    return argparse.ArgumentParser(
        prog=f"python -m benchmarks {prog}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, prefixes: Sequence[str] = ("config",)
) -> tuple[argparse.Namespace, dict[str, list[str]]]:
    """The parsed flags and, per prefix ("config"), its `--PREFIX.FIELD=VALUE` overrides in order."""
    args, rest = parser.parse_known_args(argv)
    overrides: dict[str, list[str]] = {p: [] for p in prefixes}
    for arg in rest:
        name = arg.split("=", 1)[0]
        prefix = name[2:].split(".", 1)[0] if arg.startswith("--") and "." in name else None
        if prefix not in overrides:
            parser.error(f"unrecognized argument: {arg}")
        if "=" not in arg:
            parser.error(f"{arg}: write the override as {name}=VALUE")
        overrides[prefix].append(arg)
    return args, overrides


def check_at_least(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str, least: int = 1) -> None:
    """A usage error for the first of the integer flags `names` set below `least`."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name}={value} must be at least {least}")


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Inside: a UsageError (a config that cannot run) ends as the parser's usage error (exit status 2)."""
    try:
        yield
    except UsageError as e:
        parser.error(str(e))


def load_config(
    name: str, overrides: Sequence[str] = (), *, flag: str = "config", prefix: str = "config"
) -> ml_collections.ConfigDict:
    """configs/NAME.py's `get_config()` with `--PREFIX.FIELD=VALUE` overrides applied by ml_collections, as main.py
    applies them (types, tuples, None fields alike); UsageError for a missing file or a bad override (`flag` is
    the flag that named the config, for the message). NAME may be given as main.py takes it, configs/NAME.py."""
    given = name
    if name.endswith(".py"):
        if pathlib.Path(name).resolve().parent != (ROOT / "configs").resolve():
            raise UsageError(
                f"--{flag}={given}: the benchmarks take a config of this checkout's configs/, by name (e.g. "
                f"--{flag}=cnn; the CNN configs: {cnn_names()})"
            )
        name = pathlib.Path(name).stem
    if name == "common":
        raise UsageError(
            f"--{flag}={given}: configs/common.py holds what the configs share (the CNN configs: {cnn_names()})"
        )
    if not (ROOT / "configs" / f"{name}.py").is_file():
        raise UsageError(f"--{flag}={given}: there is no configs/{name}.py (the CNN configs: {cnn_names()})")
    config = importlib.import_module(f"configs.{name}").get_config()
    if not overrides:
        return config
    fresh = importlib.import_module(f"configs.{name}").get_config()  # the file's values, for the messages
    values, argv = flags.FlagValues(), ["benchmarks", *overrides]
    try:
        config_flags.DEFINE_config_dict(prefix, config, flag_values=values, sys_argv=argv)
        values(argv)
        flag_errors.split_listed_words(config, config_flags.get_override_values(values[prefix]))
    except AttributeError as e:
        why = flag_errors.unknown_override(fresh, list(overrides), source=lambda _: f"configs/{name}.py", prefix=prefix)
        raise UsageError(why or f"unknown config field in {' '.join(overrides)}") from e
    except (flags.Error, KeyError, TypeError, ValueError) as e:
        text = " ".join(str(e).split())
        raise UsageError(flag_errors.wrong_type(fresh, list(overrides), text, prefix) or text) from e
    return values[prefix].value


def cnn_config(
    name: str, overrides: Sequence[str] = (), *, flag: str = "config", prefix: str = "config"
) -> ml_collections.ConfigDict:
    """`load_config`, refusing a config that is not a CNN's (only those train through `Programs`) or a field that
    cannot run (`state.check_config`, as main.py refuses it)."""
    config = load_config(name, overrides, flag=flag, prefix=prefix)
    if config.get("kind") != "cnn":
        raise UsageError(f"--{flag}={name} is not a CNN's config; the CNN configs: {cnn_names()}")
    try:
        state_lib.check_config(config)
    except ConfigError as e:  # named as the flag's fields: --compare's config.batch_size is compare.batch_size
        raise UsageError(config_lib.as_fields_of(str(e), prefix)) from e
    return config


def cnn_names() -> str:
    """The names of the CNN configs in configs/, for error messages."""
    names = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_"))
    kinds = {n: importlib.import_module(f"configs.{n}") for n in names if n != "common"}
    return ", ".join(n for n, m in kinds.items() if m.get_config().get("kind") == "cnn")


def with_fields(config: ml_collections.ConfigDict, **fields: Any) -> ml_collections.ConfigDict:
    """A copy of `config` with `fields` set (keys name top-level fields; `model__conv` sets model.conv)."""
    copy = config.copy_and_resolve_references()
    for key, value in fields.items():
        *parents, leaf = key.split("__")
        node = copy
        for part in parents:
            node = node[part]
        node[leaf] = value
    return copy


# What a figure is printed with


# Beside jax, what a step's speed depends on: those installed are named, with every one whose name starts with one of
# ACCELERATOR_PACKAGES (a GPU's plugin and kernels for any CUDA version, a TPU's runtime).
VERSIONED = ("jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-dtypes")
ACCELERATOR_PACKAGES = ("jax-cuda", "jax-rocm", "nvidia-cudnn", "nvidia-cublas", "libtpu")


def versioned() -> tuple[str, ...]:
    """VERSIONED and the accelerator packages installed, by name (sorted)."""
    names = {re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return VERSIONED + tuple(sorted(n for n in names if n.startswith(ACCELERATOR_PACKAGES)))


CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"  # JAX's event for a program loaded from the persistent cache


@functools.cache
def machine_fields() -> dict[str, Any]:
    """The machine a figure comes from: `machine.describe()` (the CPU) with the backend, its devices' kind and count
    (a GPU's name) and platform version, the jax version and the others installed that set a step's speed, and
    XLA_FLAGS as given."""
    device = jax.devices()[0]
    return {
        **machine.describe(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "device_kind": device.device_kind,
        "platform_version": getattr(device.client, "platform_version", None),
        "versions": metrics.versions(versioned()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


@contextlib.contextmanager
def cache_hits() -> Iterator[list[str]]:
    """Within it, each program JAX loads from its persistent compilation cache (compiled in an earlier run, or
    sitting) adds an entry to the yielded list: a compile time then holds loads, not compilations."""
    hits: list[str] = []

    def on_event(event: str, **kwargs: Any) -> None:
        if event == CACHE_HIT_EVENT:
            hits.append(event)

    jax.monitoring.register_event_listener(on_event)
    try:
        yield hits
    finally:
        jax.monitoring.unregister_event_listener(on_event)


def emit(**row: Any) -> dict[str, Any]:
    """Prints `row` as one JSON line with the machine beside it; returns the line's object."""
    line = {**row, "machine": machine_fields()}
    print(json.dumps(line), flush=True)
    return line


# The data and the train steps


@dataclasses.dataclass(frozen=True)
class Arrays:
    """The images a benchmark trains and evaluates on, and where they came from ("random" when made up)."""

    train: data.Split
    test: data.Split
    source: str


def load_arrays(config: ml_collections.ConfigDict) -> Arrays:
    """`config.data`'s training and test splits; without any data installed (no folder named by `data.dir` or
    FMNIST_DATA_DIR, none in Debian's place), random images of the same sizes: speed does not depend on the pixels,
    and `source` says "random". Data that is named or installed but fails to load is an error."""
    named = config.data.dir or os.environ.get(data.ENV_VAR) or pathlib.Path(data.DEBIAN_DIR).is_dir()
    try:
        ds = data.load(config.data, seed=config.seed)
        return Arrays(ds.train, ds.test, ds.source)
    except data.DataError:
        if named or config.data.source != "auto":
            raise
    rng = np.random.default_rng(config.seed)
    n = config.data.num_train or TRAIN_FILE_IMAGES - config.data.validation_size

    def split(size: int) -> data.Split:
        images = rng.integers(0, 256, (size, 28, 28), dtype=np.uint8)
        return data.Split(images, rng.integers(0, 10, size).astype(np.int32))

    return Arrays(split(n), split(TEST_IMAGES), "random")


@dataclasses.dataclass(frozen=True)
class Trainer:
    """A config's train call on one training split, ready to run: `call(state, i)` runs call i (of `k` steps on
    successive batches of the first epoch's order, wrapping within it) from `state` (donated)."""

    programs: Programs
    state: TrainState  # the fresh state, on the devices
    inputs: TrainInputs
    k: int
    batches: int  # per epoch
    num_params: int

    def call(self, state: TrainState, i: int) -> TrainState:
        first = i * self.k
        return self.programs.train(self.k)(
            state, self.inputs, np.int32(first), np.int32(first % (self.batches - self.k + 1))
        )


def warmed(run: Trainer) -> Trainer:
    """`run` once its first call has run from a copy of its fresh state (compiled, its memory touched): a timing
    after it is like any later one."""
    jax.block_until_ready(run.call(jax.device_put(run.state, may_alias=False), 0))
    return run


def trainer(
    config: ml_collections.ConfigDict, train: data.Split, *, steps_per_call: int | None = None, mesh: Mesh | None = None
) -> Trainer:
    """`config`'s model and recipe (augmentation, EMA, schedule included) at `config.batch_size` on `train`, set up
    as training sets it up: the package's `Programs` on all devices of `mesh`, the training set on the devices,
    the run's random roots; `steps_per_call` steps per call (default `config.steps_per_call`)."""
    mesh = mesh or parallel.make_mesh()
    k, batch = steps_per_call or config.steps_per_call, config.batch_size
    parallel.check_batch_size(batch, mesh)
    batches = len(train) // batch
    if batches < k:
        raise UsageError(f"{len(train)} training images make {batches} batches of {batch}, fewer than {k} per call")
    n = batches * batch
    graphs, state, num_params = state_lib.create_train_state(config, batches)
    recipe = state_lib.Recipe.from_config(config)
    unroll = resolve_unroll(config.scan_unroll, jax.default_backend(), config.model.conv)
    programs = Programs(graphs, mesh, batch, unroll=unroll, recipe=recipe)
    roots = RandomRoots.from_seed(config.seed, augment=recipe.augment.enabled)
    images, labels = parallel.replicate((train.images[:n], train.labels[:n]), mesh)
    inputs = TrainInputs(images, labels, programs.permutation(roots.data, 0, n), roots.dropout, roots.augment)
    return Trainer(programs, parallel.replicate(state, mesh), inputs, k, batches, num_params)


@dataclasses.dataclass(frozen=True)
class Timing:
    """What `time_training` measured: the warm-up call (compile included) and its compilations, the seconds per
    timed step, the mean training loss over every step run, and the programs and state for evaluation after."""

    first_call_seconds: float
    compile_seconds: float
    step_seconds: float
    steps: int
    mean_loss: float
    num_params: int
    programs: Programs
    state: TrainState


def time_training(
    config: ml_collections.ConfigDict,
    train: data.Split,
    *,
    steps: int,
    steps_per_call: int | None = None,
    mesh: Mesh | None = None,
    run: Trainer | None = None,
) -> Timing:
    """Times `trainer(config, train, ...)`: one warm-up call that compiles, then `steps` steps (at least one call).
    With `run`, a trainer built before for `config` on `train` (to time it again without compiling again), its
    programs as they are, from a copy of its fresh state (each call donates its state): the same steps, and a
    warm-up call that compiles only if no earlier timing did."""
    if run is None:
        run = trainer(config, train, steps_per_call=steps_per_call, mesh=mesh)
        fresh = run.state
    else:
        fresh = jax.device_put(run.state, may_alias=False)  # a copy, on the same devices: run.state stays fresh
    calls = max(1, steps // run.k)
    with compile_clock() as clock:
        start = time.perf_counter()
        state = jax.block_until_ready(run.call(fresh, 0))
        first = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(1, calls + 1):
        state = run.call(state, i)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / (calls * run.k)
    mean_loss = parallel.scalar(state.loss_sum) / ((calls + 1) * run.k * config.batch_size)
    return Timing(first, clock.seconds, seconds, calls * run.k, mean_loss, run.num_params, run.programs, state)


def whole_run_steps(config: ml_collections.ConfigDict, train_images: int) -> int:
    """The train steps of `config`'s whole run on `train_images` images (`config_lib.last_step`)."""
    return config_lib.last_step(train_images, config.batch_size, config.num_epochs)


def speed_fields(step_seconds: float, batch: int, epoch_steps: int) -> dict[str, Any]:
    """A step time as the figures print it: ms per step, training images/s, seconds per epoch of `epoch_steps`."""
    return {
        "ms_per_step": round(1000 * step_seconds, 2),
        "train_images_per_second": round(batch / step_seconds),
        "epoch_images": epoch_steps * batch,
        "epoch_seconds": round(epoch_steps * step_seconds, 2),
    }
