r"""One command that checks and times the CNN on whatever JAX finds (CPU, GPU, TPU): JSON lines.

    python benchmarks/accelerator_check.py                      # on a GPU/TPU machine or Colab
    python benchmarks/accelerator_check.py --config=vgg_bn_large --large_batch=1024   # another config's model
    python benchmarks/accelerator_check.py --steps=20           # a short check (CPU, CI)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/accelerator_check.py --steps=10

Prints: the devices and the CPU; for the model and recipe of `--config` (a file in configs/; the study's CNN by
default), at the config's batch size and at a large batch, the compile seconds, the training images/s and the
seconds an epoch of the config's training split takes at that rate, measured over `--steps` steps of the
project's own train call on all devices; the seconds to evaluate the 10,000 test images; whether one device and
all devices give the same losses from the same start (when there are several); and the training images/s with
`compute_dtype` bfloat16 against the float32 figure at the config's batch (all devices). Data: the real set when
installed, random images otherwise (speed does not depend on it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import data, parallel, train


def emit(**row) -> dict:
    print(json.dumps(row), flush=True)
    return row


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux); elsewhere what `platform` knows, or "unknown"."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_arrays(config):
    try:
        ds = data.load(config.data, seed=0)
        return ds.train.images, ds.train.labels, ds.test, ds.source
    except data.DataError:
        rng = np.random.default_rng(0)
        n = 60_000 - config.data.validation_size
        test = data.Split(rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8), rng.integers(0, 10, 10000))
        return (
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int32),
            test,
            "random",
        )


def train_run(config, mesh, images, labels, *, batch: int, steps: int, steps_per_call: int):
    """Compiles the train call of `config`'s model and recipe (augmentation included), runs `steps` steps;
    returns (compile s, s per step, mean loss, programs, state)."""
    n = len(labels) // batch * batch
    graphs, state, _ = train.create_train_state(config, n // batch)
    state = parallel.replicate(state, mesh)
    unroll = train.resolve_unroll(config.scan_unroll, jax.default_backend(), config.model.conv)
    recipe = train.Recipe.from_config(config)
    programs = train.Programs(graphs, mesh, batch, unroll=unroll, recipe=recipe)
    key = jax.random.key(config.seed)
    inputs = train.TrainInputs(
        *parallel.replicate((images[:n], labels[:n]), mesh),
        programs.permutation(key, 0, n),
        jax.random.fold_in(key, 2),
        jax.random.fold_in(key, 3) if recipe.augment.enabled else None,
    )
    calls = max(1, steps // steps_per_call)
    fn = programs.train(steps_per_call)
    batches_per_epoch = n // batch

    def call(state, i):
        first = i * steps_per_call
        return fn(state, inputs, jnp.int32(first), jnp.int32(first % (batches_per_epoch - steps_per_call + 1)))

    start = time.perf_counter()
    state = jax.block_until_ready(call(state, 0))
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(1, calls + 1):
        state = call(state, i)
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - start) / (calls * steps_per_call)
    mean_loss = parallel.scalar(state.loss_sum) / ((calls + 1) * steps_per_call * batch)
    return compile_seconds, per_step, mean_loss, programs, state


def cnn_config(name: str, parser: argparse.ArgumentParser, flag: str = "--config"):
    """configs/NAME.py's config, or a usage error when that file is missing or is not a CNN's config."""
    if (ROOT / "configs" / f"{name}.py").is_file():
        get_config = getattr(importlib.import_module(f"configs.{name}"), "get_config", None)
        config = get_config() if get_config else None
        if config is not None and config.get("kind") == "cnn":
            return config
        parser.error(f"{flag}={name} is not a CNN's config; this check times cnn, vgg_bn or vgg_bn_large")
    parser.error(f"{flag}={name}: there is no configs/{name}.py; this check times cnn, vgg_bn or vgg_bn_large")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cnn", help="a config file's name in configs/ (cnn, vgg_bn, ...)")
    parser.add_argument("--steps", type=int, default=200, help="timed train steps per setting")
    parser.add_argument("--large_batch", type=int, default=1024)
    parser.add_argument("--steps_per_call", type=int, default=10)
    args = parser.parse_args()
    for name in ("steps", "large_batch", "steps_per_call"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be at least 1")
    config = cnn_config(args.config, parser)

    devices = jax.devices()
    emit(
        check="devices",
        backend=jax.default_backend(),
        count=len(devices),
        kinds=sorted({d.device_kind for d in devices}),
        processes=jax.process_count(),
        cpu=cpu_model(),
        jax=jax.__version__,
    )
    images, labels, test, source = load_arrays(config)
    epoch_images = len(labels)
    batch_size = config.batch_size
    mesh = parallel.make_mesh()
    rates = {}
    for batch in (batch_size, args.large_batch):
        if batch % len(devices):
            emit(check="train", model=config.model.name, batch=batch, skipped=f"not a multiple of {len(devices)}")
            continue
        if epoch_images // batch < args.steps_per_call:
            skipped = f"{epoch_images} images make fewer than --steps_per_call={args.steps_per_call} batches"
            emit(check="train", model=config.model.name, batch=batch, skipped=skipped)
            continue
        config.batch_size = batch
        compile_s, per_step, loss, programs, state = train_run(
            config, mesh, images, labels, batch=batch, steps=args.steps, steps_per_call=args.steps_per_call
        )
        emit(
            check="train",
            model=config.model.name,
            batch=batch,
            devices=len(devices),
            data=source,
            compile_seconds=round(compile_s, 2),
            images_per_second=round(batch / per_step),
            epoch_images=epoch_images,
            epoch_seconds=round(epoch_images / (batch / per_step), 2),
            mean_loss=round(loss, 5),
        )
        if batch == batch_size and "float32" not in rates:  # the float32 side of the bfloat16 check below
            rates["float32"] = (round(batch / per_step), loss)
    config.batch_size = batch_size
    if "programs" not in locals():
        emit(check="evaluate", model=config.model.name, skipped="no batch size split over the devices")
        return
    eval_batch = train.eval_batch_size(config, mesh)
    warm = data.Split(test.images[:eval_batch], test.labels[:eval_batch])
    train.evaluate_split(programs, state, warm, batch_size=eval_batch)  # compiles the same one-batch program
    start = time.perf_counter()
    train.evaluate_split(programs, state, test, batch_size=eval_batch)
    emit(
        check="evaluate",
        model=config.model.name,
        images=len(test),
        batch=eval_batch,
        seconds=round(time.perf_counter() - start, 3),
    )

    steps = 2 * args.steps_per_call
    if len(devices) == 1:
        emit(check="devices_agree", model=config.model.name, skipped="one device: nothing to compare")
    else:
        losses = {}
        for n in (1, len(devices)):
            one = parallel.make_mesh(devices[:n])
            *_, loss, _, _ = train_run(
                config, one, images, labels, batch=batch_size, steps=steps, steps_per_call=steps // 2
            )
            losses[n] = loss
        same = bool(np.allclose(list(losses.values()), losses[1], rtol=1e-4))
        emit(check="devices_agree", model=config.model.name, steps=steps, mean_loss_by_devices=losses, same=same)
    if "float32" not in rates:
        emit(check="bfloat16", model=config.model.name, skipped=f"batch {batch_size} not split over the devices")
        return
    config.compute_dtype = "bfloat16"  # against the float32 rate of the config's batch above
    _, per_step, loss, _, _ = train_run(
        config, mesh, images, labels, batch=batch_size, steps=args.steps, steps_per_call=args.steps_per_call
    )
    rates["bfloat16"] = (round(batch_size / per_step), loss)
    config.compute_dtype = "float32"
    emit(
        check="bfloat16",
        model=config.model.name,
        batch=batch_size,
        images_per_second={k: v[0] for k, v in rates.items()},
        speedup=round(rates["bfloat16"][0] / rates["float32"][0], 2),
        mean_loss={k: v[1] for k, v in rates.items()},
    )


if __name__ == "__main__":
    main()
