r"""What a user waits for: a config's test accuracy and the time of its whole run, over seeds, as JSON.

    python -m benchmarks time_to_accuracy --config=cnn --seeds=3
    python -m benchmarks time_to_accuracy --config=vgg_bn --seeds=3 --compare=cnn
    python -m benchmarks time_to_accuracy --config=cnn --seeds=2 --config.num_epochs=5 --workdir=runs/tta

Runs `training.loop.train_and_evaluate` (what main.py runs for a CNN: per-epoch validation, checkpoints and
TensorBoard included) for seeds 0..N-1 (`config.seed`), each in a fresh workdir (a temporary one, deleted after;
with --workdir, WORKDIR/seed_<s>, kept). One line per seed: the test accuracy; the wall seconds of the whole run
(start to results, compilation included); the training seconds (results.json's `train_seconds`); the compile
seconds (the XLA compilations JAX records during the run, summed), with the folder of compiled programs kept as
main.py keeps them (`config.compilation_cache`: by default on a GPU or TPU) and the programs loaded from it
(`cache_hits`: a seed after the first, or a run of an earlier sitting, loads what was compiled before, in less time);
training images/s (the images of every step over the training seconds). Then their mean and sample standard
deviation.

--compare=OTHER (`--compare.FIELD=VALUE` overrides it) times OTHER's train step in the same sitting, twice: before
the first seed's run and after the last (each a warm-up call that compiles, then --compare_steps steps of the
package's train call). A sitting of several whole runs lasts long enough for a shared machine's speed to drift, so
the step time used is the mean of the two, and both are printed. It estimates OTHER's whole-run training time as its
total steps times that step time, and prints the ratio of this config's mean wall time to that estimate. The
estimate leaves out OTHER's compilation and evaluation, so the ratio is conservative: OTHER's real run takes longer
than the estimate, and the true ratio is lower.
"""

from __future__ import annotations

import contextlib
import pathlib
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections

from benchmarks import common
from fmnist_jax import compile_cache, metrics, timing
from fmnist_jax.training.loop import train_and_evaluate

PER_SEED = ("test_accuracy", "wall_seconds", "train_seconds", "compile_seconds", "images_per_second")


def kept_workdirs(root: str | None, seeds: int) -> list[pathlib.Path] | None:
    """ROOT/seed_<s> for every seed, none of which may exist yet (a run there would resume); None without ROOT."""
    if root is None:
        return None
    workdirs = [pathlib.Path(root) / f"seed_{seed}" for seed in range(seeds)]
    for workdir in workdirs:
        if workdir.exists():
            raise common.UsageError(f"--workdir: {workdir} exists, and a run there would resume: name a new folder")
    return workdirs


@contextlib.contextmanager
def fresh_workdir(kept: list[pathlib.Path] | None, seed: int) -> Iterator[pathlib.Path]:
    """The seed's kept workdir, or a temporary folder deleted after the run."""
    if kept is not None:
        yield kept[seed]
        return
    with tempfile.TemporaryDirectory(prefix=f"fmnist-tta-seed{seed}-") as folder:
        yield pathlib.Path(folder)


def run_seed(config: ml_collections.ConfigDict, seed: int, workdir: pathlib.Path) -> dict[str, Any]:
    """One whole run of `config` with `config.seed` = `seed` in `workdir`, and its figures; compiled programs kept
    where main.py would keep them (`config.compilation_cache`)."""
    config = common.with_fields(config, seed=seed)
    cache = compile_cache.set_up(config.compilation_cache, jax.default_backend())
    with common.cache_hits() as hits:
        start = time.perf_counter()
        results = train_and_evaluate(config, workdir)
        wall = time.perf_counter() - start
    compiled = results["seconds"]  # the run's own compile clock (fmnist_jax.timing)
    steps = metrics.read_history(workdir)[-1]["step"]
    return {
        "seed": seed,
        "test_accuracy": results["test_accuracy"],
        "validation_accuracy": results["validation_accuracy"],
        "wall_seconds": round(wall, 3),
        "train_seconds": round(results["train_seconds"], 3),
        "compile_seconds": round(compiled["compilation"], 3),
        "compilations": compiled["compilations"],
        "compilation_cache": cache,
        "cache_hits": len(hits),
        "images_per_second": round(steps * config.batch_size / results["train_seconds"], 1),
        "steps": steps,
        "batch_size": config.batch_size,
        "epochs": config.num_epochs,
    }


def mean_std(values: Sequence[float]) -> dict[str, float | None]:
    """The mean and the sample standard deviation (None for one value)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def time_other_step(other: ml_collections.ConfigDict, arrays: common.Arrays, *, steps: int) -> common.Timing:
    """OTHER's train step timed now on its training split."""
    return common.time_training(other, arrays.train, steps=steps)


def compare_row(
    name: str,
    other: ml_collections.ConfigDict,
    other_name: str,
    mean_wall: float,
    *,
    arrays: common.Arrays,
    steps: int,
    before_step_seconds: float,
) -> dict[str, Any]:
    """OTHER's step time measured now and before the runs, its whole-run training time estimated from their mean,
    and the ratio."""
    after = time_other_step(other, arrays, steps=steps)
    step_seconds = (before_step_seconds + after.step_seconds) / 2
    total_steps = common.whole_run_steps(other, len(arrays.train))
    estimate = total_steps * step_seconds
    return {
        "compare": other_name,
        "config": name,
        "step_seconds": step_seconds,
        "step_seconds_before": before_step_seconds,
        "step_seconds_after": after.step_seconds,
        "steps_timed": after.steps,
        "steps_per_call": other.steps_per_call,
        "total_steps": total_steps,
        "estimated_train_seconds": estimate,
        "mean_wall_seconds": mean_wall,
        "ratio": mean_wall / estimate,
        "ratio_is": f"mean wall seconds of {name} / estimated training seconds of {other_name}",
        "estimate_leaves_out": f"{other_name}'s compilation and evaluation (and its checkpoints): the ratio is "
        "conservative, the true ratio is lower",
        "data": arrays.source,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("time_to_accuracy", __doc__)
    parser.add_argument("--config", default="cnn", help="a CNN config's name in configs/")
    parser.add_argument("--seeds", type=int, default=1, help="runs with config.seed = 0..SEEDS-1")
    parser.add_argument("--compare", default=None, help="another CNN config whose run time to estimate")
    parser.add_argument("--compare_steps", type=int, default=300, help="timed train steps of --compare's config")
    parser.add_argument("--workdir", default=None, help="keep the runs in WORKDIR/seed_<s> (default: temporary)")
    timing.start_up()  # the process's start-up (and --compare's timing) are this benchmark's, not seed 0's run's
    args, overrides = common.parse(parser, argv, prefixes=("config", "compare"))
    common.check_at_least(parser, args, "seeds", "compare_steps")
    with common.usage_errors(parser):
        config = common.cnn_config(args.config, overrides["config"])
        other = args.compare and common.cnn_config(args.compare, overrides["compare"], flag="compare", prefix="compare")
        if overrides["compare"] and not other:
            raise common.UsageError("--compare.FIELD=VALUE overrides need --compare=OTHER")
        kept = kept_workdirs(args.workdir, args.seeds)
    other_arrays = other and common.load_arrays(other)  # loaded once, timed before and after the runs
    # Only the step time is kept across the runs, not the timed programs and state.
    before = other and time_other_step(other, other_arrays, steps=args.compare_steps).step_seconds
    rows = []
    for seed in range(args.seeds):
        with fresh_workdir(kept, seed) as workdir:
            rows.append(common.emit(config=args.config, **run_seed(config, seed, workdir)))
    summary = {key: mean_std([row[key] for row in rows]) for key in PER_SEED}
    common.emit(config=args.config, seeds=[row["seed"] for row in rows], **summary)
    if other:
        mean_wall = summary["wall_seconds"]["mean"]
        row = compare_row(
            args.config,
            other,
            args.compare,
            mean_wall,
            arrays=other_arrays,
            steps=args.compare_steps,
            before_step_seconds=before,
        )
        common.emit(**row)
