"""`python -m benchmarks`: the sub-commands on tiny data, each figure's JSON consistent with the others and with what
the package wrote (never a timing asserted), and the pieces they share: config overrides parsed as main.py parses
them, the arrays, the compile clock, the machine beside every line. The layer breakdown of flop_efficiency finds
every convolution of a model with the shapes and arguments training gives it, and its per-layer FLOPs add up to
the count taken from the train step's own jaxpr."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import io
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tarfile
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, last_line, load_config, quotient_error, rounded, subprocess_env

from benchmarks import (
    COMMANDS,
    common,
    flop_efficiency,
    layers,
    loop_overhead,
    products,
    profile_step,
    step_times,
    time_to_accuracy,
    train_speed,
)
from fmnist_jax import compile_cache, data, machine, metrics, ops, timing


def tiny(data_dir: pathlib.Path, prefix: str = "config") -> list[str]:
    """Overrides that put a CNN config on the tiny data set: the tiny run's 256 training images (for cnn: 4 steps of
    64, 2 per call), so that the tests here that train the study CNN as it is run the train calls that the suite's
    tiny runs compile already (float32, and bfloat16 in test_precision and the accelerator check)."""
    fields = {
        "data.dir": data_dir,
        "data.validation_size": 64,
        "data.num_train": 256,
        "steps_per_call": 2,
        "eval_batch_size": 50,
    }
    return [f"--{prefix}.{field}={value}" for field, value in fields.items()]


def run(module, *args: str) -> list[dict]:
    """The JSON lines that `module.main(args)` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main([str(a) for a in args])
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_help_lists_every_sub_command_with_its_first_docstring_line():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    listed = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert (
        list(listed)
        == list(COMMANDS)
        == [
            "train_speed",
            "time_to_accuracy",
            "step_times",
            "loop_overhead",
            "accelerator_check",
            "flop_efficiency",
            "profile",
        ]
    )
    for name, module in COMMANDS.items():
        assert importlib.import_module(module).__doc__.strip().splitlines()[0] in listed[name]
    unknown = subprocess.run(  # its module's name, as history.md names the files
        [sys.executable, "-m", "benchmarks", "profile_step"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert unknown.returncode == 2
    assert unknown.stderr.endswith("error: no benchmark named 'profile_step' (did you mean 'profile'?)\n")
    bad_interval = subprocess.run(  # before the sub-command's imports and compiles
        [sys.executable, "-m", "benchmarks", "train_speed", "--steps=1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=subprocess_env({"FMNIST_PROGRESS_SECONDS": "soon"}),
        check=False,
    )
    assert bad_interval.returncode == 2 and "Traceback" not in bad_interval.stderr
    assert bad_interval.stderr.endswith(
        "train_speed: error: FMNIST_PROGRESS_SECONDS='soon': give the seconds between progress redraws (e.g. 1), or "
        "unset it\n"
    )


def test_overrides_are_parsed_as_main_py_parses_them():
    config = common.load_config(
        "vgg_bn", ["--config.num_epochs=3", "--config.data.num_train=100", "--config.model.widths=8,16,32"]
    )
    assert (config.num_epochs, config.data.num_train, tuple(config.model.widths)) == (3, 100, (8, 16, 32))
    assert common.load_config("cnn", ["--config.augment.flip=true"]).augment.flip is True
    other = common.load_config("cnn", ["--compare.num_epochs=2"], flag="compare", prefix="compare")
    assert other.num_epochs == 2
    assert common.load_config(str(ROOT / "configs" / "vgg_bn.py")).name == "vgg_bn"  # as main.py takes it


@pytest.mark.parametrize(
    ("name", "overrides", "says"),
    [
        (
            "cnn2",
            [],
            "--config=cnn2: there is no configs/cnn2.py "
            "(the CNN configs: cnn, speedrun, speedrun_gpu, vgg_bn, vgg_bn_large)",
        ),
        (
            "random_forest",
            [],
            "--config=random_forest is not a CNN's config; the CNN configs: cnn, speedrun, speedrun_gpu",
        ),
        (
            "cnn",
            ["--config.model.conf=xla"],
            'unknown config field in --config.model.conf=xla: config.model has no field "conf" (did you mean "conv"?)',
        ),
        ("cnn", ["--config.num_epochs=x"], "--config.num_epochs=x: config.num_epochs takes an integer (the config"),
        ("cnn", ["--config.batch_size=0"], "config.batch_size=0 must be positive."),  # as main.py refuses it
        ("common", [], "--config=common: configs/common.py holds what the configs share (the CNN configs: cnn, "),
        ("/tmp/cnn.py", [], "--config=/tmp/cnn.py: the benchmarks take a config of this checkout's configs/, by name"),
    ],
)
def test_a_config_that_cannot_run_is_one_usage_line(name, overrides, says):
    with pytest.raises(common.UsageError) as error:
        common.cnn_config(name, overrides)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_another_configs_refusal_names_its_own_flag():
    """--compare's (or --other's) fields are named as that flag's; a wrong type quotes the config file's value, not
    an earlier override's."""
    with pytest.raises(common.UsageError, match=r"^compare\.batch_size=0 must be positive\.$"):
        common.cnn_config("cnn", ["--compare.batch_size=0"], flag="compare", prefix="compare")
    with pytest.raises(
        common.UsageError,
        match=r"^--compare.batch_size=x: compare.batch_size takes an integer \(the config file's: 64\)$",
    ):
        common.cnn_config(
            "cnn", ["--compare.batch_size=32", "--compare.batch_size=x"], flag="compare", prefix="compare"
        )


@pytest.mark.parametrize(
    ("module", "args", "says"),
    [
        (flop_efficiency, ["--configs=cnn,vgg_bnn"], "--configs=vgg_bnn: there is no configs/vgg_bnn.py"),
        (flop_efficiency, ["--configs=linear_svm"], "--configs=linear_svm is not a CNN's config"),
        (flop_efficiency, ["--compute_dtype=float32,bf16"], "'bf16' is not float32 or bfloat16"),
        (
            flop_efficiency,
            ["--config.compute_dtype=bfloat16"],  # once measured as float32 without a word
            "--config.compute_dtype=bfloat16: each dtype of --compute_dtype is measured; set it there",
        ),
        (flop_efficiency, ["--matmul_seconds=0"], "--matmul_seconds and --product_seconds must be above 0"),
        (train_speed, ["--steps=0"], "--steps=0 must be at least 1"),
        (train_speed, ["--config.num_epochs", "2"], "--config.num_epochs: write the override as"),
        (train_speed, ["--compare.num_epochs=2"], "unrecognized argument: --compare.num_epochs=2"),
        (time_to_accuracy, ["--compare.num_epochs=2"], "--compare.FIELD=VALUE overrides need --compare=OTHER"),
        (time_to_accuracy, ["--compare=random_forest"], "--compare=random_forest is not a CNN's config"),
        (profile_step, ["--config=compare"], "--config=compare is not a CNN's config"),
        (
            profile_step,
            [f"--trace_dir={ROOT / 'README.md'}"],
            "README.md: a file, not a folder; name a writable folder",
        ),
        (step_times, ["--variant=no_head"], "--variant='no_head': write it as LABEL:FIELD=VALUE"),
        (step_times, ["--variant=a:model.head_width"], "--variant='a:model.head_width': write it as LABEL:"),
        (step_times, ["--variant=base:batch_size=32"], "'base' names --config itself"),
        (step_times, ["--variant=a:batch_size=32", "--variant=a:batch_size=16"], "the label 'a' is used twice"),
        (
            step_times,
            ["--variant=a:model.head_widht=0"],
            "--variant='a:model.head_widht=0': unknown config field in --config.model.head_widht=0: config.model has",
        ),
        (step_times, ["--other=linear_svm"], "--other=linear_svm is not a CNN's config"),
        (step_times, ["--rounds=0"], "--rounds=0 must be at least 1"),
        (step_times, ["--other.num_epochs=2"], "--other.FIELD=VALUE overrides need --other=NAME"),
        (loop_overhead, ["--steps=0"], "--steps=0 must be at least 1"),
        (loop_overhead, ["--config=linear_svm"], "--config=linear_svm is not a CNN's config"),
    ],
)
def test_bad_arguments_stop_before_anything_is_timed(capsys, module, args, says):
    with pytest.raises(SystemExit) as stop:
        module.main(args)
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == "" and says in last_line(err)


def test_time_to_accuracy_refuses_a_kept_workdir_that_exists(capsys, tmp_path):
    (tmp_path / "seed_1").mkdir()
    with pytest.raises(SystemExit):
        time_to_accuracy.main(["--seeds=2", f"--workdir={tmp_path}"])
    assert f"{tmp_path / 'seed_1'} exists, and a run there would resume" in capsys.readouterr().err
    assert not (tmp_path / "seed_0").exists()


def test_every_line_carries_the_machine_it_was_measured_on(capsys, monkeypatch):
    """The CPU, the devices (a GPU's name), the versions a step's speed depends on and the XLA flags it ran with."""
    import flax
    import jaxlib
    import optax

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")  # read as the line is printed (cached for the process)
    common.machine_fields.cache_clear()
    common.emit(figure=1.5)
    common.machine_fields.cache_clear()
    line = json.loads(capsys.readouterr().out)
    assert line["figure"] == 1.5
    fields = line["machine"]
    assert {k: fields[k] for k in machine.describe()} == machine.describe() and fields["cpu"]
    assert (fields["jax"], fields["backend"], fields["devices"]) == (
        jax.__version__,
        jax.default_backend(),
        jax.device_count(),
    )
    assert fields["device_kind"] == jax.devices()[0].device_kind
    assert fields["versions"]["flax"] == flax.__version__ and fields["versions"]["optax"] == optax.__version__
    assert fields["versions"]["jaxlib"] == jaxlib.__version__
    assert fields["xla_flags"] == "--xla_cpu_max_isa=AVX2"


def test_a_gpus_plugin_and_kernel_libraries_are_named_whatever_their_cuda_version(monkeypatch):
    """A GPU image's jax-cuda13-plugin, nvidia-cudnn-cu13 and nvidia-cublas are named in a line's versions, as a
    CUDA 12 image's are; other packages are not."""
    installed = {"jax_cuda13_plugin": "0.11.2", "nvidia-cudnn-cu13": "9.1", "nvidia-cublas": "13.0", "requests": "2"}
    fake = [types.SimpleNamespace(metadata={"Name": name}) for name in installed]
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: fake)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1")
    names = common.versioned()
    assert names[: len(common.VERSIONED)] == common.VERSIONED and "ml-dtypes" in names
    assert names[len(common.VERSIONED) :] == ("jax-cuda13-plugin", "nvidia-cublas", "nvidia-cudnn-cu13")


def test_without_data_the_arrays_are_random_images_of_the_configs_sizes(tiny_data, tmp_path, monkeypatch):
    arrays = common.load_arrays(common.load_config("cnn", tiny(tiny_data)))
    assert (len(arrays.train), len(arrays.test)) == (256, 100) and arrays.source.startswith("idx:")

    def missing(*args, **kwargs):
        raise data.DataError("no Fashion-MNIST found")

    monkeypatch.setattr(data, "load", missing)
    monkeypatch.setattr(data, "DEBIAN_DIR", str(tmp_path / "none"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    arrays = common.load_arrays(common.load_config("cnn", ["--config.data.num_train=300"]))
    assert arrays.source == "random" and (len(arrays.train), len(arrays.test)) == (300, 10_000)
    assert arrays.train.images.dtype == np.uint8 and arrays.train.images.shape[1:] == (28, 28)
    with pytest.raises(data.DataError):  # a folder the user named must load
        common.load_arrays(common.load_config("cnn", [f"--config.data.dir={tiny_data}"]))
    monkeypatch.setenv(data.ENV_VAR, str(tiny_data))  # so must the environment's, or an installed copy
    with pytest.raises(data.DataError):
        common.load_arrays(common.load_config("cnn", []))


def test_train_speed_times_this_loop_and_the_plain_flax_loop_and_skips_a_missing_torch(tiny_data, monkeypatch):
    """Each loop compiled first, then the loops in turn over the rounds, each round one loop further along, every
    loop the same steps (3 rounded down to the project's one call of 2); each line the median of its rounds, the
    ratio line the median of the rounds' own ratios."""
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    ran = []  # (loop, steps) of each timing, in order
    real_timing, real_plain = common.time_training, train_speed.plain_flax

    def time_training(config, train, **kwargs):
        ran.append(("fmnist_jax", kwargs["steps"]))
        return real_timing(config, train, **kwargs)

    def plain_flax(train, **kwargs):
        first, compiled, timed = real_plain(train, **kwargs)
        return first, compiled, lambda steps: ran.append(("plain_flax", steps)) or timed(steps)

    monkeypatch.setattr(common, "time_training", time_training)
    monkeypatch.setattr(train_speed, "plain_flax", plain_flax)
    ours, plain, torch, ratios = run(train_speed, "--steps=3", "--rounds=3", *tiny(tiny_data))
    rounds = [("fmnist_jax", 2), ("plain_flax", 2), ("plain_flax", 2), ("fmnist_jax", 2)] * 2  # rotated rounds
    assert ran == [("fmnist_jax", 3), *rounds[:6]]  # first the compiling timing, at --steps (2 steps, one call)
    assert [ours["loop"], plain["loop"], torch["loop"]] == ["fmnist_jax", "plain_flax", "pytorch"]
    assert torch["skipped"].startswith("torch is not installed")
    assert ours["num_params"] == train_speed.STUDY_PARAMS and ours["steps_per_call"] == 2
    assert ours["steps"] == plain["steps"] == 2
    assert ours["conv"] == ops.resolve_conv("auto") and ours["data"] == plain["data"]
    for row in (ours, plain):  # the median of three rounds, each compiled before them
        assert row["rounds"] == 3 and row["ms_per_step"] == pytest.approx(np.median(row["ms_per_step_per_round"]))
        assert 0 <= row["compile_seconds"] <= row["first_call_seconds"]  # its compilations inside its first call
        assert row["epoch_images"] == 256  # the config's training split: 4 steps of 64
        assert row["epoch_seconds"] == pytest.approx(4 * row["ms_per_step"] / 1000, abs=0.01)
        within = quotient_error(64_000, row["ms_per_step"], 0, rounded(2)) + rounded(0)
        assert row["train_images_per_second"] == pytest.approx(64_000 / row["ms_per_step"], abs=within)
    pairs = zip(plain["ms_per_step_per_round"], ours["ms_per_step_per_round"], strict=True)
    within = max(
        quotient_error(p, o, rounded(2), rounded(2))
        for p, o in zip(*(r["ms_per_step_per_round"] for r in (plain, ours)), strict=True)
    ) + rounded(2)
    expected = [p / o for p, o in pairs]
    assert ratios["per_round"]["plain_flax_over_fmnist_jax"] == pytest.approx(expected, abs=within)
    assert ratios["ratios"] == {"plain_flax_over_fmnist_jax": pytest.approx(np.median(expected), abs=within)}


def test_train_speed_names_the_training_convolutions_of_each_dtype(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert train_speed.conv_in_training(load_config("cnn")) == "im2col"
    bfloat16 = load_config("cnn", compute_dtype="bfloat16")
    assert train_speed.conv_in_training(bfloat16) == "taps (im2col for one input channel)"
    assert train_speed.conv_in_training(load_config("cnn", compute_dtype="bfloat16", **{"model.conv": "xla"})) == "xla"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert train_speed.conv_in_training(bfloat16) == "xla"


def test_loop_overhead_sets_a_runs_training_time_against_its_steps_times_the_step_time(tiny_data):
    (row,) = run(loop_overhead, "--steps=2", "--config.num_epochs=2", *tiny(tiny_data))
    assert (row["total_steps"], row["epochs"], row["steps_per_call"], row["batch_size"]) == (8, 2, 2, 64)
    assert row["step_seconds"] == pytest.approx((row["step_seconds_before"] + row["step_seconds_after"]) / 2)
    assert row["estimated_train_seconds"] == pytest.approx(8 * row["step_seconds"])
    assert row["ratio"] == pytest.approx(row["train_seconds"] / row["estimated_train_seconds"])
    estimate, phase = row["estimated_train_seconds"], row["training_phase_seconds"]
    assert row["ratio_with_validation_and_saves"] == pytest.approx(phase / estimate)
    assert 0 < row["train_seconds"] <= phase == row["phases"]["training"] <= row["wall_seconds"]
    assert row["compilation_by_phase"]["training"] == 0 and row["compilation_by_phase"]["compile"] > 0
    assert 0 < row["epoch_seconds"]["min"] <= row["epoch_seconds"]["median"] <= row["epoch_seconds"]["max"]
    assert row["epoch_seconds"]["min"] + row["epoch_seconds"]["max"] == pytest.approx(row["train_seconds"])
    assert row["data"].startswith("idx:") and 0 <= row["test_accuracy"] <= 1
    assert row["compilation_cache"] == os.environ["JAX_COMPILATION_CACHE_DIR"]  # "auto": the one JAX was given
    assert isinstance(row["cache_hits"], int) and row["cache_hits"] >= 0  # the session's cache: earlier tests' programs


def test_time_to_accuracy_reports_each_seeds_run_their_spread_and_the_ratio_to_another_config(
    tiny_data, tmp_path, monkeypatch
):
    cache = tmp_path / "compiled"  # kept where main.py would keep them: here, the folder the config names
    args = ["--seeds=2", f"--workdir={tmp_path}", "--config.num_epochs=1", f"--config.compilation_cache={cache}"]
    args += tiny(tiny_data)
    # The other config's own number of epochs: its training split (256 images, 4 steps of 64) 3 times.
    compare = ["--compare=cnn", "--compare_steps=2", *tiny(tiny_data, prefix="compare"), "--compare.num_epochs=3"]
    order = []

    def recorded(name):
        real = getattr(time_to_accuracy, name)
        return lambda *a, **k: order.append(name) or real(*a, **k)

    for name in ("time_other_step", "run_seed"):
        monkeypatch.setattr(time_to_accuracy, name, recorded(name))
    monkeypatch.setattr(timing, "_START_UP_TAKEN", [])  # as in a fresh process: its start-up not yet taken
    try:
        *seeds, summary, ratio = run(time_to_accuracy, *args, *compare)
    finally:
        compile_cache.set_up("auto", "cpu")  # back to the session's folder (tests/conftest.py)
    assert [row["compilation_cache"] for row in seeds] == [str(cache)] * 2 and any(cache.iterdir())
    first, second = seeds  # the first seed compiles into the folder; the second loads every program from it
    assert first["cache_hits"] == 0 < second["cache_hits"] == second["compilations"]
    assert order == ["time_other_step", "run_seed", "run_seed", "time_other_step"]
    assert [row["seed"] for row in seeds] == [0, 1] == summary["seeds"]
    for row in seeds:
        workdir = tmp_path / f"seed_{row['seed']}"
        results, history = metrics.load_results(workdir), metrics.read_history(workdir)
        assert results["seed"] == row["seed"] and row["test_accuracy"] == results["test_accuracy"]
        assert "before_run" not in results["seconds"]["phases"]  # the benchmark's start-up and --compare timing
        assert row["train_seconds"] == round(results["train_seconds"], 3)
        assert row["steps"] == history[-1]["step"] == 4 and row["epochs"] == 1
        assert row["images_per_second"] == pytest.approx(4 * 64 / results["train_seconds"], abs=rounded(1))
        assert 0 <= row["compile_seconds"] <= row["wall_seconds"] and row["train_seconds"] <= row["wall_seconds"]
    for key in time_to_accuracy.PER_SEED:
        values = [row[key] for row in seeds]
        assert summary[key] == {"mean": pytest.approx(np.mean(values)), "std": pytest.approx(statistics.stdev(values))}
    assert ratio["compare"] == "cnn" and ratio["total_steps"] == 4 * 3
    assert ratio["steps_timed"] == 2 and ratio["mean_wall_seconds"] == summary["wall_seconds"]["mean"]
    # Timed before the first seed and after the last; the estimate uses their mean.
    assert ratio["step_seconds_before"] > 0 and ratio["step_seconds_after"] > 0
    assert ratio["step_seconds"] == pytest.approx((ratio["step_seconds_before"] + ratio["step_seconds_after"]) / 2)
    assert ratio["estimated_train_seconds"] == pytest.approx(12 * ratio["step_seconds"])
    assert ratio["ratio"] == pytest.approx(summary["wall_seconds"]["mean"] / (12 * ratio["step_seconds"]))
    assert (
        "compilation and evaluation" in ratio["estimate_leaves_out"] and "conservative" in ratio["estimate_leaves_out"]
    )


def test_step_times_alternate_the_variants_and_summarise_them_per_image(tiny_data, monkeypatch):
    """Rounds of base, variants and the other config in turn, each config's train call built once and timed from its
    fresh state in every round; the medians, ratios and training ratio follow from the per-timing lines."""
    built, timed = [], []
    real_trainer, real_timing = common.trainer, common.time_training

    def fields(config):
        return config.name, config.batch_size, config.learning_rate, config.seed, config.num_epochs

    def trainer(config, train, **kwargs):
        run = real_trainer(config, train, **kwargs)
        built.append((fields(config), run))
        return run

    def time_training(config, train, **kwargs):
        timing = real_timing(config, train, **kwargs)
        timed.append((fields(config), kwargs["steps"], kwargs["run"], timing.mean_loss))
        return timing

    warmed, real_warmed = [], common.warmed

    def warm(run):
        warmed.append((run, len(timed)))
        return real_warmed(run)

    monkeypatch.setattr(common, "trainer", trainer)
    monkeypatch.setattr(common, "time_training", time_training)
    monkeypatch.setattr(common, "warmed", warm)
    # The base and its variants, and the other config (its own overrides, its own 30 epochs): all the study CNN,
    # whose seed 0 and seed 1 models and batch-64 train call the tests above compiled already. The b32 variant
    # changes two fields, one of them outside the program (the number of epochs, under the constant learning
    # rate): its batch-32 train call is the one-device accelerator check's (tests/test_platform.py).
    args = ["--config=cnn", *tiny(tiny_data), "--config.num_epochs=3"]
    variants = ["--variant=b32:batch_size=32;num_epochs=4", "--variant=seed 1:seed=1"]
    other = ["--other=cnn", *tiny(tiny_data, prefix="other"), "--rounds=2", "--images=128"]
    *lines, summary = run(step_times, *args, *variants, *other)
    configs = [("cnn", 64, 1e-3, 0, 3), ("cnn", 32, 1e-3, 0, 4), ("cnn", 64, 1e-3, 1, 3), ("cnn", 64, 1e-3, 0, 30)]
    assert [config for config, _ in built] == configs  # each built once, before the first round
    assert warmed == [(run, 0) for _, run in built]  # and run once before any timing: round 0 is like the others
    steps = [2, 4, 2, 2]  # each for about --images images
    order = [0, 1, 2, 3, 1, 2, 3, 0]  # alternated, the second round one further along
    assert [(config, n) for config, n, _, _ in timed] == [(configs[i], steps[i]) for i in order]
    assert all(used is built[i][1] for (*_, used, _), i in zip(timed, order, strict=True))
    losses = {}
    for (*_, loss), i in zip(timed, order, strict=True):
        losses.setdefault(i, []).append(loss)
    assert all(a == b for a, b in losses.values())  # the same steps from the same fresh state, round after round
    labels = ["base", "b32", "seed 1", "cnn"]
    assert [(line["round"], line["variant"]) for line in lines] == [(i // 4, labels[order[i]]) for i in range(8)]
    for line in lines:
        assert line["config"] == "cnn"
        within = 1000 * rounded(3) / line["batch_size"] + rounded(2)  # from ms (3 digits), printed to 2
        assert line["us_per_image"] == pytest.approx(1000 * line["ms_per_step"] / line["batch_size"], abs=within)
    us = {label: [line["us_per_image"] for line in lines if line["variant"] == label] for label in labels}
    medians = summary["median_us_per_image"]
    assert medians == {label: pytest.approx(np.median(v), abs=2 * rounded(2)) for label, v in us.items()}
    assert summary["relative_to_base"] == {
        label: pytest.approx(
            medians[label] / medians["base"],
            abs=quotient_error(medians[label], medians["base"], rounded(2), rounded(2)) + rounded(4),
        )
        for label in labels
    }
    # The whole runs on the 256 tiny training images: the base 4 steps x 3 epochs, cnn 4 steps x its 30 epochs.
    assert summary["training_ratio"]["is"].startswith("base's 12 steps x its step time / cnn's 120 steps x")
    base, cnn = ([line["ms_per_step"] for line in lines if line["variant"] == label] for label in ("base", "cnn"))
    pairs = list(zip(base, cnn, strict=True))
    per_round = [12 * b / (120 * c) for b, c in pairs]
    # each from times printed to 3 digits, itself to 4; the median moves no more than the values it is taken of
    within = max(0.1 * quotient_error(b, c, rounded(3), rounded(3)) for b, c in pairs) + rounded(4)
    assert summary["training_ratio"]["per_round"] == pytest.approx(per_round, abs=within)
    assert summary["training_ratio"]["median"] == pytest.approx(np.median(per_round), abs=within)


def test_one_seed_has_no_spread():
    assert time_to_accuracy.mean_std([0.9]) == {"mean": 0.9, "std": None}
    assert time_to_accuracy.mean_std([1.0, 2.0, 4.0]) == {
        "mean": pytest.approx(7 / 3),
        "std": pytest.approx((7 / 3) ** 0.5),  # the sample standard deviation: ((16 + 1 + 25) / 9 / 2) ** 0.5
    }


class _Loss(NamedTuple):
    loss_sum: jax.Array


def test_time_training_times_the_calls_after_the_warm_up_per_step_on_the_wall_clock(monkeypatch):
    """A stand-in train call on a stand-in clock: the warm-up call (call 0) is the first call's seconds and not the
    step time's; the step time is the later calls' seconds over their steps (not their calls); the mean loss is
    over every step run, the warm-up's included."""
    now, ran = [100.0], []
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))  # only the wall clock

    class Run:  # 2 steps per call of 4 images; call i adds a loss of i + 1 per image and step
        k, num_params, programs, state = 2, 7, None, _Loss(jnp.float32(0))

        def call(self, state, i):
            ran.append(i)
            now[0] += 5.0 if i == 0 else 0.25
            return _Loss(state.loss_sum + (i + 1) * self.k * 4)

    timed = common.time_training(load_config("cnn", batch_size=4), None, steps=5, run=Run())
    assert ran == [0, 1, 2]  # 5 steps: the warm-up call, then 2 calls of 2
    assert (timed.first_call_seconds, timed.steps, timed.num_params) == (5.0, 4, 7)
    assert timed.step_seconds == 2 * 0.25 / 4
    assert timed.mean_loss == pytest.approx((1 + 2 + 3) / 3)
    assert float(timed.state.loss_sum) == (1 + 2 + 3) * 2 * 4


def test_step_times_summary_takes_medians_per_image_and_the_training_ratio_from_step_times():
    """Three rounds of stand-in step times (seconds per step) of configs of different batch sizes: the medians are
    of the per-image times, each relative to the base's; the training ratio is per round, of whole runs' steps
    times step times, and its median."""
    configs = {
        "base": load_config("cnn", batch_size=64, num_epochs=3),  # 256 images: 4 steps x 3 epochs
        "fast": load_config("cnn", batch_size=64, num_epochs=3),
        "vgg": load_config("cnn", batch_size=32, num_epochs=2),  # 8 steps x 2 epochs
    }
    seconds = {"base": [0.064, 0.128, 0.640], "fast": [0.032] * 3, "vgg": [0.096, 0.128, 0.160]}
    arrays = {label: types.SimpleNamespace(train=np.zeros(256)) for label in configs}
    row = step_times.summary(configs, seconds, arrays, other="vgg")
    # per image: base 1000, 2000, 10000 us (median 2000, mean 4333); vgg 3000, 4000, 5000 us
    assert row["median_us_per_image"] == {"base": 2000, "fast": 500, "vgg": 4000}
    assert row["relative_to_base"] == {"base": 1, "fast": 0.25, "vgg": 2}
    ratios = [0.064 * 12 / (0.096 * 16), 0.128 * 12 / (0.128 * 16), 0.640 * 12 / (0.160 * 16)]  # 0.5, 0.75, 3
    assert row["training_ratio"]["per_round"] == pytest.approx(ratios) == [0.5, 0.75, 3]
    assert row["training_ratio"]["median"] == 0.75
    assert row["training_ratio"]["is"].startswith("base's 12 steps x its step time / vgg's 16 steps x")


def test_loop_overhead_figures_follow_from_its_timings_and_the_runs_results(monkeypatch):
    """Stand-ins for the two timings of the train call, the run and its history: the step time is the mean of the
    timing before the run and the one after; the ratios are the run's seconds over its steps times that step time;
    the epochs' median is a median."""
    order, arrays = [], common.Arrays(np.zeros(256), np.zeros(100), "stand-in")
    timings = iter([0.01, 0.03])

    def time_training(config, train, *, steps):
        order.append(("time", steps))
        assert train is arrays.train
        return types.SimpleNamespace(step_seconds=next(timings))

    def train_and_evaluate(config, workdir):
        order.append(("run", config.num_epochs))
        phases = {"compile": 1.0, "training": 12.0}
        seconds = {"phases": phases, "compilation_by_phase": {"compile": 1.0, "training": 0.0}}
        return {"train_seconds": 9.0, "seconds": seconds, "test_accuracy": 0.5}

    history = [{"step": 100, "seconds": 1.0}, {"step": 200, "seconds": 2.0}, {"step": 300, "seconds": 6.0}]
    monkeypatch.setattr(common, "load_arrays", lambda config: arrays)
    monkeypatch.setattr(common, "time_training", time_training)
    monkeypatch.setattr(loop_overhead, "train_and_evaluate", train_and_evaluate)
    monkeypatch.setattr(metrics, "read_history", lambda folder: history)
    monkeypatch.setattr(compile_cache, "set_up", lambda folder, backend: "kept here")
    monkeypatch.setattr(timing, "_START_UP_TAKEN", [])
    (row,) = run(loop_overhead, "--steps=7", "--config.num_epochs=3")
    assert order == [("time", 7), ("run", 3), ("time", 7)]
    assert (row["step_seconds_before"], row["step_seconds_after"]) == (0.01, 0.03)
    assert row["step_seconds"] == pytest.approx(0.02) and row["total_steps"] == 300 and row["epochs"] == 3
    assert row["estimated_train_seconds"] == pytest.approx(6.0)
    assert row["ratio"] == pytest.approx(9.0 / 6.0) and row["ratio_with_validation_and_saves"] == pytest.approx(2.0)
    assert row["epoch_seconds"] == {"min": 1.0, "median": 2.0, "max": 6.0}
    assert (row["train_seconds"], row["training_phase_seconds"], row["test_accuracy"]) == (9.0, 12.0, 0.5)
    assert (row["data"], row["compilation_cache"], row["cache_hits"]) == ("stand-in", "kept here", 0)


def test_time_to_accuracy_estimates_the_others_run_from_the_mean_of_its_two_step_times(monkeypatch):
    """A stand-in timing after the runs (0.03 s per step) and before (0.01): the estimate is the other config's whole
    run (4 steps x 3 epochs) times their mean, the ratio this config's mean wall seconds over it."""
    arrays = common.Arrays(np.zeros(256), np.zeros(100), "stand-in")
    after = types.SimpleNamespace(step_seconds=0.03, steps=6)
    monkeypatch.setattr(time_to_accuracy, "time_other_step", lambda other, given, *, steps: after)
    other = load_config("cnn", batch_size=64, num_epochs=3)
    row = time_to_accuracy.compare_row("vgg", other, "cnn", 4.8, arrays=arrays, steps=6, before_step_seconds=0.01)
    assert (row["step_seconds_before"], row["step_seconds_after"], row["steps_timed"]) == (0.01, 0.03, 6)
    assert row["step_seconds"] == pytest.approx(0.02) and row["total_steps"] == 12
    assert row["estimated_train_seconds"] == pytest.approx(0.24) and row["mean_wall_seconds"] == 4.8
    assert row["ratio"] == pytest.approx(4.8 / 0.24) and row["data"] == "stand-in"


@pytest.mark.parametrize("forward_only", [False, True])
def test_profile_sums_the_traced_ops_of_the_package_program(tiny_data, tmp_path, forward_only):
    # 4 steps a call: 256 random images, the 4-step train call that the tiny runs of test_train and test_report's
    # comparison compile already.
    args = ["--calls=1", "--top=4", "--steps_per_call=4", f"--trace_dir={tmp_path}", *tiny(tiny_data)]
    *ops_rows, total = run(profile_step, *args, *(["--forward_only"] if forward_only else []))
    assert 1 <= len(ops_rows) <= 4 and total["ops"] >= len(ops_rows)
    times = [row["ms_per_step"] for row in ops_rows]
    assert times == sorted(times, reverse=True)
    assert total["ops_ms_per_step"] >= sum(times) - 0.01
    program = "eval_step" if forward_only else "train_steps"
    assert all(row["from"].startswith(f"jit({program})") for row in ops_rows if row["from"])
    assert (total["steps"], total["batch"]) == ((1, 50) if forward_only else (4, 64))
    assert pathlib.Path(total["trace"]).is_file() and tmp_path in pathlib.Path(total["trace"]).parents
    if forward_only:  # the folder reused: the figures are the new trace's, not the first one's
        *_, again = run(profile_step, *args, "--forward_only")
        assert again["trace"] != total["trace"] and pathlib.Path(again["trace"]).is_file()


# flop_efficiency


@pytest.mark.parametrize("groups", [1, 4])
def test_a_convolutions_flops_are_its_outputs_times_its_kernels_share_of_them(groups):
    """2 x outputs x (kernel size x input channels per group): a grouped convolution's kernel shape holds the
    groups already."""
    x, kernel = jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 8 // groups, 16))
    conv = functools.partial(
        jax.lax.conv_general_dilated, window_strides=(1, 1), padding="VALID", feature_group_count=groups
    )
    jaxpr = jax.make_jaxpr(lambda x, k: conv(x, k, dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, kernel).jaxpr
    assert flop_efficiency.count_flops(jaxpr) == 2 * (2 * 7 * 7 * 16) * (3 * 3 * 8 // groups)


def dense_training_flops(batch: int, *shapes: tuple[int, int]) -> int:
    """Forward, weight gradient and input gradient of each (in, out) dense layer."""
    return 3 * sum(2 * batch * i * o for i, o in shapes)


def shift_flops(config) -> int:
    """vgg_bn's 2-pixel shifts: two one-hot (28, 28) selection products per image (fmnist_jax/augment.py)."""
    return 2 * (2 * 28 * 28 * 28) * config.batch_size if config.augment.translate else 0


@pytest.mark.parametrize(
    ("name", "padding", "inputs", "dense"),
    [
        ("cnn", "valid", [(64, 28, 28, 1), (64, 13, 13, 64), (64, 5, 5, 128)], [(256, 256), (256, 10)]),
        (
            "vgg_bn",
            "same",
            [(128, 28, 28, 1), (128, 14, 14, 32), (128, 14, 14, 64), (128, 7, 7, 64), (128, 7, 7, 128)],
            [(1152, 256), (256, 10)],
        ),
    ],
)
def test_the_layer_breakdown_finds_each_convolution_and_its_flops(name, padding, inputs, dense):
    config = load_config(name)
    found = layers.conv_layers(config)
    assert [layer["input"] for layer in found] == inputs
    assert {layer["padding"] for layer in found} == {padding}
    assert all(layer["kwargs"]["training"] is True and layer["dtype"] == jnp.float32 for layer in found)
    # The first layer needs no input gradient (its input is the images): 2 products, the others 3.
    conv_flops = sum(layers.layer_flops(layer, i == 0) for i, layer in enumerate(found))
    batch = config.batch_size
    total = conv_flops + dense_training_flops(batch, *dense) + shift_flops(config)
    assert total == flop_efficiency.flops_per_image(config) * batch
    xla = load_config(name, **{"model.conv": "xla"})  # as GPUs and TPUs run it: the same useful products
    assert flop_efficiency.flops_per_image(xla) == flop_efficiency.flops_per_image(config)


def test_the_layer_breakdown_follows_the_compute_dtype():
    found = layers.conv_layers(load_config("cnn", compute_dtype="bfloat16"))
    assert [layer["kwargs"]["compute_dtype"] for layer in found] == [jnp.bfloat16] * 3


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_the_convolutions_stand_in_keeps_shapes_and_removes_every_convolution_product(compute_dtype):
    x, kernel = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 5))
    dtype = jnp.dtype(compute_dtype)
    for padding, real in (("valid", ops.conv2d_valid), ("same", ops.conv2d_same)):
        fake = layers.stand_in(padding)(x, kernel, "auto", training=True, compute_dtype=dtype)
        # The real convolution's output shape, traced (nothing compiled or run).
        shape = jax.eval_shape(lambda x, kernel, real=real: real(x, kernel, "im2col", compute_dtype=dtype), x, kernel)
        assert fake.shape == shape.shape and fake.dtype == dtype
    # With the stand-ins, the step's products are the dense layers' (and vgg_bn's shifts) alone.
    for name, dense in (("cnn", [(256, 256), (256, 10)]), ("vgg_bn", [(1152, 256), (256, 10)])):
        config = load_config(name, compute_dtype=compute_dtype)
        expected = dense_training_flops(config.batch_size, *dense) + shift_flops(config)
        with layers.convolutions_stood_in():
            assert flop_efficiency.flops_per_image(config) * config.batch_size == expected


@pytest.fixture(scope="module")
def dtype_lines(tiny_data) -> list[dict]:
    """One sitting: the study CNN in both compute dtypes against the float32 limit."""
    args = ["--configs=cnn", "--compute_dtype=float32,bfloat16", "--steps=2", "--matmul_seconds=0.05"]
    return run(flop_efficiency, *args, *tiny(tiny_data))


def test_one_sitting_measures_each_compute_dtype_against_the_float32_limit(dtype_lines):
    limit, *rows = dtype_lines
    assert limit["matmul_shape"] == list(products.MATMUL_SHAPE) and limit["matmul_gflops"] > 0
    assert limit["measurements"] == 3  # before, and after each dtype
    assert [row["compute_dtype"] for row in rows] == ["float32", "bfloat16"]
    limit_ms = rows[0]["flop_limit_ms_per_step"]
    for row in rows:
        assert row["train_mflop_per_image"] == rows[0]["train_mflop_per_image"]  # the same products, counted alike
        assert row["flop_limit_ms_per_step"] == limit_ms  # both against the float32 rate
        mflop, gflops = 64 * row["train_mflop_per_image"], limit["matmul_gflops"]  # printed to 2 and 1 digits
        within = quotient_error(mflop, gflops, 64 * rounded(2), rounded(1)) + rounded(2)
        assert limit_ms == pytest.approx(mflop / gflops, abs=within)
        within = quotient_error(row["ms_per_step"], limit_ms, rounded(2), rounded(2)) + rounded(2)
        assert row["ratio"] == pytest.approx(row["ms_per_step"] / limit_ms, abs=within)
        assert row["epoch_images"] == 256  # 4 steps of 64: the config's training split
        assert row["epoch_seconds"] == pytest.approx(4 * row["ms_per_step"] / 1000, abs=0.01)
        assert row["epoch_limit_seconds"] == pytest.approx(4 * limit_ms / 1000, abs=0.01)


def test_the_layer_breakdown_splits_the_step_at_the_convolutions_measured_in_place(tiny_data):
    args = ["--configs=cnn", "--layers", "--steps=2", "--matmul_seconds=0.05"]
    _, step, *per_layer, split = run(flop_efficiency, *args, *tiny(tiny_data))
    assert [row["layer"] for row in per_layer] == [0, 1, 2] and all(r["ms_per_step"] > 0 for r in per_layer)
    assert split["step_ms"] == step["ms_per_step"]
    assert split["convolutions_alone_ms"] == pytest.approx(sum(r["ms_per_step"] for r in per_layer), abs=0.02)
    assert split["step_without_convolutions_ms"] > 0
    assert split["convolutions_in_step_ms"] == pytest.approx(
        split["step_ms"] - split["step_without_convolutions_ms"], abs=0.02
    )


def test_the_product_forms_compute_the_products_of_a_layer_and_are_timed_per_dtype(monkeypatch):
    m, k, n = 12, 5, 3
    patches, kernel, dy = (np.random.default_rng(i).normal(size=s) for i, s in enumerate([(m, k), (k, n), (m, n)]))
    forward, input_grad, weight_grad, laid_out = (fn for _, fn, _ in products.forms(m, k, n))
    np.testing.assert_allclose(forward(patches, kernel), patches @ kernel, rtol=1e-5)
    np.testing.assert_allclose(input_grad(dy, kernel), dy @ kernel.T, rtol=1e-5)
    np.testing.assert_allclose(weight_grad(patches, dy), patches.T @ dy, rtol=1e-5)
    np.testing.assert_allclose(laid_out(patches.T, dy), patches.T @ dy, rtol=1e-5)
    monkeypatch.setattr(products, "LAYERS", (("dense2", 64, 256, 10),))
    timed, best_seconds = [], products.best_seconds

    def recorded(fn, shapes, dtype, seconds):
        timed.append((dtype, best_seconds(fn, shapes, dtype, seconds)))
        return timed[-1][1]

    monkeypatch.setattr(products, "best_seconds", recorded)
    rows = list(products.product_rows(("float32", "bfloat16"), seconds=0.01))
    assert [(r["dtype"], r["product"]) for r in rows] == [
        (dtype, name) for dtype in ("float32", "bfloat16") for name, _, _ in products.forms(64, 256, 10)
    ]
    assert [dtype for dtype, _ in timed] == [jnp.dtype(r["dtype"]) for r in rows]  # each form timed in its dtype
    for row, (_, seconds) in zip(rows, timed, strict=True):  # the rate of its time, whatever the machine's speed
        assert (row["m"], row["k"], row["n"]) == (64, 256, 10) and seconds > 0
        assert row["gflops"] == pytest.approx(2 * 64 * 256 * 10 / seconds / 1e9, abs=rounded(1))


def test_the_device_script_parses_and_names_every_step_it_runs():
    """benchmarks/device_session.sh (run only on a lent GPU): valid bash, and its steps, its list of them (checked
    before any runs) and its header's descriptions agree."""
    script = ROOT / "benchmarks" / "device_session.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    labels = {name for group in re.findall(r"^    ([a-z0-9|]+)\)", text, re.M) for name in group.split("|")}
    listed = set(re.search(r'^KNOWN="([^"]*)"$', text, re.M).group(1).split())
    described = set(re.findall(r"^#   ([a-z0-9]+) {2,}", text, re.M))
    assert labels == listed and {"env", "resume", "speedrun", "fast95", "wide0"} <= labels
    assert {re.sub(r"^wide\d$", "wide", name) for name in labels} == described  # wide0-2: `wide`'s parts


def test_the_device_script_brings_back_two_files_after_a_step_and_stops_at_once_without_its_kit(tiny_data, tmp_path):
    """The device tool brings back at most 8 files from OUT, 2 folders down: after every step the script leaves
    OUT/steps.txt and OUT/figures.tgz (every step's output, no runs or caches) and nothing else; without the
    packages it needs it stops (exit 3) before any step, saying how to prepare them."""
    script = str(ROOT / "benchmarks" / "device_session.sh")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**subprocess_env(), "PYTHON": sys.executable, "DEVICE_WORK": str(work), "FMNIST_DATA_DIR": str(tiny_data)}
    done = subprocess.run(
        ["bash", script, "run", str(out), "env"], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["figures.tgz", "steps.txt"]
    (line,) = (out / "steps.txt").read_text().splitlines()
    assert re.fullmatch(r"env rc=0 \d+ ms", line) and line in done.stdout
    with tarfile.open(out / "figures.tgz") as packed:
        assert sorted(packed.getnames()) == [".", "./env.out", "./steps.txt"]
        assert f" {jax.__version__} " in packed.extractfile("./env.out").read().decode()  # the versions it ran with
    bare = subprocess.run(  # a Python without site-packages: none of the packages
        ["bash", script, "run", str(tmp_path / "bare"), "env"],
        check=False,
        env={**env, "PYTHON": f"{sys.executable} -I -S"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bare.returncode == 3 and "run `bash benchmarks/device_session.sh prepare`" in last_line(bare.stderr)
    assert list((tmp_path / "bare").iterdir()) == []
    typo = subprocess.run(  # a step misnamed after a good one: refused before the good one spends device time
        ["bash", script, "run", str(tmp_path / "typo"), "env", "wide3"], check=False, env=env, capture_output=True
    )
    assert typo.returncode == 2 and b"error: unknown step wide3 (the steps: env check" in typo.stderr
    assert not (tmp_path / "typo").exists()
