r"""Checks and times a CNN on whatever JAX finds (CPU, GPU, TPU): devices, training, evaluation, bfloat16.

    python -m benchmarks accelerator_check                      # on a GPU/TPU machine or Colab
    python -m benchmarks accelerator_check --config=vgg_bn_large --large_batch=1024   # another config's model
    python -m benchmarks accelerator_check --steps=10 --large_batch=256                # a short check (CPU, CI)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks accelerator_check --steps=10

One JSON line per check (`check`): the devices; for the model and recipe of `--config` (a file in configs/, the
study's CNN by default; `--config.FIELD=VALUE` overrides it), at the config's batch size and at `--large_batch`, the
compile seconds, the training images/s and the seconds an epoch of the config's training split takes at that rate,
measured over `--steps` steps of the package's own train call on all devices; the seconds to evaluate the test set
(the median of five passes); whether one device and all devices give the same losses from the same start (when there
are several); and the training images/s with `compute_dtype` bfloat16 against float32 at the config's batch (all
devices). Data: the config's (the real set when installed), random images otherwise (speed does not depend on them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from benchmarks import common
from fmnist_jax import data, parallel
from fmnist_jax.training.evaluate import eval_batch_size, evaluate_split


def train_checks(
    config: ml_collections.ConfigDict, arrays: common.Arrays, mesh: Mesh, *, steps: int, k: int, large_batch: int
) -> dict[int, common.Timing]:
    """One `train` line per batch size (the config's, then `large_batch`); the timings of those that ran."""
    model, timings = config.model.name, {}
    for batch in dict.fromkeys((config.batch_size, large_batch)):
        if batch % mesh.devices.size:
            common.emit(check="train", model=model, batch=batch, skipped=f"not a multiple of {mesh.devices.size}")
            continue
        if len(arrays.train) // batch < k:
            skipped = f"{len(arrays.train)} images make fewer than --steps_per_call={k} batches"
            common.emit(check="train", model=model, batch=batch, skipped=skipped)
            continue
        timing = common.time_training(
            common.with_fields(config, batch_size=batch), arrays.train, steps=steps, steps_per_call=k, mesh=mesh
        )
        timings[batch] = timing
        epoch_steps = len(arrays.train) // batch
        common.emit(
            check="train",
            model=model,
            batch=batch,
            compute_dtype=config.compute_dtype,
            devices=mesh.devices.size,
            data=arrays.source,
            steps=timing.steps,
            compile_seconds=round(timing.compile_seconds, 2),
            first_call_seconds=round(timing.first_call_seconds, 2),
            images_per_second=round(batch / timing.step_seconds),
            epoch_images=len(arrays.train),
            epoch_seconds=round(epoch_steps * timing.step_seconds, 2),
            mean_loss=round(timing.mean_loss, 5),
        )
    return timings


EVALUATE_PASSES = 5  # a pass over 10,000 images takes milliseconds on a GPU: one would be a single sample


def evaluate_check(config: ml_collections.ConfigDict, timing: common.Timing, test: data.Split, mesh: Mesh) -> None:
    """The seconds to evaluate `test` with the package's padded evaluation (its program compiled first): the median
    of `EVALUATE_PASSES` passes, each given."""
    batch = eval_batch_size(config, mesh)
    warm = data.Split(test.images[:batch], test.labels[:batch])
    evaluate_split(timing.programs, timing.state, warm, batch_size=batch)  # compiles the same one-batch program
    passes = []
    for _ in range(EVALUATE_PASSES):
        start = time.perf_counter()
        scores = evaluate_split(timing.programs, timing.state, test, batch_size=batch)
        passes.append(time.perf_counter() - start)
    seconds = statistics.median(passes)
    common.emit(
        check="evaluate",
        model=config.model.name,
        images=len(test),
        batch=batch,
        seconds=round(seconds, 4),
        seconds_per_pass=[round(s, 4) for s in passes],
        images_per_second=round(len(test) / seconds),
        accuracy=scores["accuracy"],
    )


def devices_agree_check(config: ml_collections.ConfigDict, arrays: common.Arrays, *, k: int) -> None:
    """The mean loss of the same 2 calls of `k` steps from the same start on one device and on all of them."""
    devices = jax.devices()
    if len(devices) == 1:
        common.emit(check="devices_agree", model=config.model.name, skipped="one device: nothing to compare")
        return
    losses = {}
    for n in (1, len(devices)):
        mesh = parallel.make_mesh(devices[:n])
        losses[n] = common.time_training(config, arrays.train, steps=k, steps_per_call=k, mesh=mesh).mean_loss
    same = bool(np.allclose(list(losses.values()), losses[1], rtol=1e-4))
    common.emit(check="devices_agree", model=config.model.name, steps=2 * k, mean_loss_by_devices=losses, same=same)


def bfloat16_check(
    config: ml_collections.ConfigDict, arrays: common.Arrays, own: common.Timing, *, steps: int, k: int
) -> None:
    """bfloat16's training images/s and mean loss against float32's at the config's batch: the config's own
    `compute_dtype` is its train line's timing (`own`), the other is timed here."""
    other = "bfloat16" if config.compute_dtype == "float32" else "float32"
    timed = common.time_training(
        common.with_fields(config, compute_dtype=other), arrays.train, steps=steps, steps_per_call=k
    )
    by_dtype = {config.compute_dtype: own, other: timed}
    float32, bfloat16 = by_dtype["float32"], by_dtype["bfloat16"]
    batch = config.batch_size
    rates = {"float32": round(batch / float32.step_seconds), "bfloat16": round(batch / bfloat16.step_seconds)}
    common.emit(
        check="bfloat16",
        model=config.model.name,
        batch=batch,
        images_per_second=rates,
        speedup=round(float32.step_seconds / bfloat16.step_seconds, 2),
        mean_loss={"float32": round(float32.mean_loss, 5), "bfloat16": round(bfloat16.mean_loss, 5)},
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("accelerator_check", __doc__)
    parser.add_argument("--config", default="cnn", help="a CNN config's name in configs/ (cnn, vgg_bn, ...)")
    parser.add_argument("--steps", type=int, default=200, help="timed train steps per setting")
    parser.add_argument("--large_batch", type=int, default=1024)
    parser.add_argument("--steps_per_call", type=int, default=None, help="default: the config's steps_per_call")
    args, overrides = common.parse(parser, argv)
    common.check_at_least(parser, args, "steps", "large_batch", "steps_per_call")
    with common.usage_errors(parser):
        config = common.cnn_config(args.config, overrides["config"])
    k = args.steps_per_call or config.steps_per_call
    devices = jax.devices()
    common.emit(
        check="devices",
        count=len(devices),
        kinds=sorted({d.device_kind for d in devices}),
        processes=jax.process_count(),
    )
    arrays = common.load_arrays(config)
    mesh = parallel.make_mesh()
    timings = train_checks(config, arrays, mesh, steps=args.steps, k=k, large_batch=args.large_batch)
    if not timings:
        common.emit(check="evaluate", model=config.model.name, skipped="no batch size split over the devices")
        return
    evaluate_check(config, next(iter(timings.values())), arrays.test, mesh)
    if config.batch_size not in timings:
        skipped = f"batch {config.batch_size} did not run (see its train line)"
        for check in ("devices_agree", "bfloat16"):
            common.emit(check=check, model=config.model.name, skipped=skipped)
        return
    devices_agree_check(config, arrays, k=k)
    bfloat16_check(config, arrays, timings[config.batch_size], steps=args.steps, k=k)
