r"""The training loop against its bare train call: a whole run's training time over its steps times the step time.

    python -m benchmarks loop_overhead --config=cnn --config.num_epochs=3
    python -m benchmarks loop_overhead --config=vgg_bn_large --config.num_epochs=10 --steps=500

Times the config's train call as the other benchmarks do (a warm-up call that compiles, then --steps steps of the
package's train call), runs `training.loop.train_and_evaluate` in a temporary workdir (what main.py runs: per-epoch
validation, checkpoint saves, history, TensorBoard, progress), then times the train call again; the step time is the
mean of the two. Prints, as one JSON line, the run's training seconds (the epochs' own seconds, results.json's
`train_seconds`: no compilation, no validation) and its training phase (the epochs with their validation and saves),
each over the estimate (the run's steps times the step time), and the seconds of each phase of the run. On a fast
device the ratio shows what the loop's host work costs; on a CPU the steps dominate and it stays near 1.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence

import jax

from benchmarks import common
from fmnist_jax import compile_cache, metrics, timing
from fmnist_jax.training.loop import train_and_evaluate


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("loop_overhead", __doc__)
    parser.add_argument("--config", default="cnn", help="a CNN config's name in configs/")
    parser.add_argument("--steps", type=int, default=300, help="timed steps of the bare train call, before and after")
    timing.start_up()  # the process's start-up is this benchmark's, not the timed run's
    args, overrides = common.parse(parser, argv)
    common.check_at_least(parser, args, "steps")
    with common.usage_errors(parser):
        config = common.cnn_config(args.config, overrides["config"])
    arrays = common.load_arrays(config)
    before = common.time_training(config, arrays.train, steps=args.steps)
    # As main.py runs it, after the bare call's timing: that compiles the train program, which the run would load.
    cache = compile_cache.set_up(config.compilation_cache, jax.default_backend())
    with tempfile.TemporaryDirectory(prefix="fmnist-loop-") as folder, common.cache_hits() as hits:
        start = time.perf_counter()
        results = train_and_evaluate(config, folder)
        wall = time.perf_counter() - start
        history = metrics.read_history(folder)
    after = common.time_training(config, arrays.train, steps=args.steps)
    step_seconds = (before.step_seconds + after.step_seconds) / 2
    total_steps = history[-1]["step"]
    estimate = total_steps * step_seconds
    seconds = results["seconds"]
    training_phase = seconds["phases"]["training"]
    epochs = [r["seconds"] for r in history]
    common.emit(
        config=args.config,
        batch_size=config.batch_size,
        steps_per_call=config.steps_per_call,
        total_steps=total_steps,
        epochs=len(history),
        step_seconds=step_seconds,
        step_seconds_before=before.step_seconds,
        step_seconds_after=after.step_seconds,
        estimated_train_seconds=estimate,
        train_seconds=results["train_seconds"],
        training_phase_seconds=training_phase,
        ratio=results["train_seconds"] / estimate,
        ratio_with_validation_and_saves=training_phase / estimate,
        epoch_seconds={"min": min(epochs), "median": statistics.median(epochs), "max": max(epochs)},
        wall_seconds=wall,
        phases=seconds["phases"],
        compilation_by_phase=seconds["compilation_by_phase"],
        test_accuracy=results["test_accuracy"],
        data=arrays.source,
        compilation_cache=cache,
        cache_hits=len(hits),
    )
