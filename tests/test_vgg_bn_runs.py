"""The stronger CNN's recipe end to end on tiny data, through configs/speedrun.py (configs/vgg_bn.py's recipe on
one convolution per stage: the first test pins what else differs): 8 devices give the 1-device maths (BatchNorm
over the global batch, augmentation by position in it), SIGKILL and rerun give the same bits, a checkpoint moves
from 1 device to 8, evaluate and predict use the moving average and the flip TTA, the moving average never changes
the trained weights, and the study's fingerprint is untouched (tests/test_fingerprint.py)."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import (
    NARROW_RECIPE,
    ROOT,
    check,
    checkpoint_steps,
    devices,
    load_config,
    main_args,
    run_interrupted,
    run_main,
    subprocess_env,
)

from fmnist_jax import config_lib, data, metrics, parallel, run
from fmnist_jax.training import evaluate
from fmnist_jax.training import state as state_lib

# The speedrun's recipe (augmentation, BatchNorm, AdamW + schedule, smoothing, EMA, TTA) narrowed as
# helpers.NARROW_RECIPE (with vgg_bn's dropout and moving average and random erasing on), on the tiny data's 256
# training images, a checkpoint every 2 steps. test_report.py's fourth comparison member trains the same maths.
FIELDS = {**NARROW_RECIPE, "data.validation_size": 64, "checkpoint.every_steps": 2, "checkpoint.max_to_keep": 4}


def args(tiny_data, workdir):
    """main.py's arguments for the recipe above."""
    return main_args("speedrun", workdir, {"data.dir": tiny_data, **FIELDS})


def config(tiny_data, **changes):
    """The recipe above as a config, `changes` applied (for runs in this process: the same config.json as `args`'s
    runs write)."""
    return load_config("speedrun", **{"data.dir": str(tiny_data), **FIELDS, **changes})


def run_here(tiny_data, workdir, **changes) -> dict:
    """Trains `config(tiny_data, **changes)` in this process, on its one device as `devices(1)` gives main.py."""
    assert jax.device_count() == 1
    return run.run(config(tiny_data, **changes), workdir)


def differing(name: str, other: str) -> dict:
    """Every field (operational ones too) whose value differs between configs/NAME.py and configs/OTHER.py, as
    field -> (NAME's value, OTHER's)."""
    a, b = (config_lib.flatten(config_lib.to_dict(load_config(n))) for n in (name, other))
    return {k: (a.get(k), b.get(k)) for k in a | b if a.get(k) != b.get(k)}


# On 8 devices: the evaluation program of each recipe form (no test-time views, the flip, the flip and the shifts),
# compiled, and the cross-device collectives in it, one JSON line.
EVAL_COLLECTIVES = """
import json, re, sys
import numpy as np
from fmnist_jax import parallel
from fmnist_jax.training import state as state_lib, step as steps
from helpers import load_config
mesh, found = parallel.make_mesh(), {}
for flip, shift in ((False, 0), (True, 0), (True, 1)):
    config = load_config("speedrun", **{**json.loads(sys.argv[1]), "tta_flip": flip, "tta_shift": shift})
    graphs, state, _ = state_lib.create_train_state(config)
    programs = steps.Programs(graphs, mesh, 64, unroll=False, recipe=state_lib.Recipe.from_config(config))
    batch = [parallel.shard_batch(np.zeros((64, *s), t), mesh) for s, t in (((28, 28), np.uint8), ((), np.int32))]
    mask = parallel.shard_batch(np.ones(64, bool), mesh)
    text = programs.eval.lower(parallel.replicate(state, mesh), *batch, mask).compile().as_text()
    kinds = r"all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter|collective-broadcast"
    found[f"flip={flip} shift={shift}"] = sorted(set(re.findall(kinds, text)))
print(json.dumps({"devices": len(mesh.devices.flat), "collectives": found}))
"""


def test_the_evaluation_program_has_no_cross_device_collective_with_or_without_test_time_views():
    """Evaluation programs in flight together on XLA:CPU deadlock where one holds a cross-device collective
    (`steps.Programs`): the flip TTA once concatenated each batch with its mirrors along the split axis, which moved
    images between devices (an all-gather, a collective-permute) and aborted about half of the 8-device runs with
    the TTA on. Compiled on 8 devices, no form holds a collective: none, the flip, the flip and the shifts."""
    env = subprocess_env(devices(8))
    env["PYTHONPATH"] = f"{ROOT / 'tests'}{os.pathsep}{env['PYTHONPATH']}"  # for helpers
    small = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in FIELDS.items()})
    command = [sys.executable, "-c", EVAL_COLLECTIVES, small]
    result = check(subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False))
    forms = ("flip=False shift=0", "flip=True shift=0", "flip=True shift=1")
    assert json.loads(result.stdout.splitlines()[-1]) == {"devices": 8, "collectives": {form: [] for form in forms}}


def test_the_speedrun_is_the_stronger_cnns_recipe_on_one_convolution_per_stage():
    """The runs below train configs/speedrun.py (at batch 32, 2 epochs, with vgg_bn's dropout and moving average);
    configs/vgg_bn.py differs from it in these fields alone, so they test both recipes."""
    assert differing("speedrun", "vgg_bn") == {
        "name": ("speedrun", "vgg_bn"),
        "model.depths": ([1, 1, 1], [1, 2, 2]),
        "model.widths": ([24, 48, 96], [32, 64, 128]),
        "batch_size": (64, 128),
        "num_epochs": (26, 20),
        "model.dropout": (0.0, 0.1),  # the runs set vgg_bn's 0.1: the dropout masks are tested too
        "ema_decay": (0.0, 0.999),  # and vgg_bn's moving average
        "tta_shift": (1, 0),  # the runs score with the speedrun's six views, vgg_bn's two in test_recipe.py
    }


def test_the_gpu_speedrun_is_the_speedrun_at_batch_512_on_vgg_bns_convolutions():
    """configs/speedrun_gpu.py adds no code path: the speedrun's recipe with vgg_bn's convolutions, a larger batch
    and its learning rate, schedule and epochs; the runs here and vgg_bn's tests (its model) cover it."""
    assert differing("speedrun_gpu", "speedrun") == {
        "name": ("speedrun_gpu", "speedrun"),
        "model.depths": ([1, 2, 2], [1, 1, 1]),
        "model.widths": ([32, 64, 128], [24, 48, 96]),
        "batch_size": (512, 64),
        "learning_rate": (6e-3, 3e-3),
        "schedule.warmup_epochs": (2.0, 1.0),
        "num_epochs": (24, 26),
        "tta_shift": (0, 1),
    }


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """The uninterrupted run on one device (in this process: the runs that need a fresh one are main.py's)."""
    workdir = tmp_path_factory.mktemp("vgg_reference")
    run_here(tiny_data, workdir)
    return workdir


def test_the_recipe_learns_and_records_its_moving_average(reference):
    results = metrics.load_results(reference)
    history = metrics.read_history(reference)
    assert [r["epoch"] for r in history] == [1, 2]
    # Two epochs of 8 steps under shifts that move the tiny images' class bars: well above chance (0.1).
    assert results["model"] == "vgg_bn" and results["test_accuracy"] > 0.3
    assert history[1]["train_loss"] < history[0]["train_loss"]


def test_the_moving_average_is_a_shadow_that_training_never_reads(tiny_data, tmp_path, reference):
    """A run without the moving average ends on the reference's raw weights, bit for bit: removing it (as the
    speedrun does) changes what is evaluated, never what is trained, so the reference's raw weights score it exactly
    (docs/models.md, the speedrun's ablation)."""
    run_here(tiny_data, tmp_path, ema_decay=0.0, **{"checkpoint.every_steps": 0})  # saves once per epoch only
    mesh = parallel.make_mesh()
    states = {
        decay: evaluate.restore_for_inference(config(tiny_data, ema_decay=decay), workdir, mesh)[1]
        for decay, workdir in ((0.999, reference), (0.0, tmp_path))
    }
    assert states[0.0].ema is None and states[0.999].ema is not None
    raw = states[0.999].replace(ema=None)
    assert state_lib.params_sha256(raw) == state_lib.params_sha256(states[0.0])
    assert state_lib.params_sha256(raw) != state_lib.params_sha256(states[0.999].replace(model=states[0.999].ema))


def test_sigkill_and_rerun_give_the_uninterrupted_bits(tiny_data, tmp_path, reference, caplog):
    killed = run_interrupted("KILL", 6, "in_flight", *args(tiny_data, tmp_path), env=devices(1))  # mid-save
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "results.json").exists(), killed.stderr[-2000:]
    assert max(checkpoint_steps(tmp_path)) == 4  # step 6's save was cut short
    caplog.set_level(logging.INFO)
    run_here(tiny_data, tmp_path)  # the rerun
    assert "Resumed from checkpoint at step 4 " in caplog.text
    ours, theirs = metrics.load_results(tmp_path), metrics.load_results(reference)
    assert ours["params_sha256"] == theirs["params_sha256"]  # the model state and its moving average
    assert ours["test_accuracy"] == theirs["test_accuracy"]
    assert [r["train_loss"] for r in metrics.read_history(tmp_path)] == [
        r["train_loss"] for r in metrics.read_history(reference)
    ]


def test_a_one_device_checkpoint_finishes_on_eight_devices_with_the_same_maths(tiny_data, tmp_path, reference):
    """The reference's step-10 checkpoint (written on one device) finishes on 8 devices of 4 images each: the
    restore works across device counts, and the 6 steps on 8 devices give the 1-device epoch loss and predictions.
    Per-device BatchNorm statistics of 4 images, or per-device random numbers, would move them far more; what is
    left is reductions in another order, which 6 steps at a learning rate of up to 3e-3 grow to a few 1e-4 in the
    loss and a few 1e-3 in the probabilities."""
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir)
    for step in checkpoint_steps(workdir):
        if step > 10:
            shutil.rmtree(workdir / "checkpoints" / str(step))
    (workdir / "results.json").unlink()
    result = check(run_main(*args(tiny_data, workdir), env=devices(8)))
    assert "Resumed from checkpoint at step 10" in result.stderr and "Mesh: 8 cpu device(s)" in result.stderr
    ours, theirs = metrics.read_history(workdir), metrics.read_history(reference)
    assert ours[0] == theirs[0]  # epoch 1: the reference's own record, kept
    np.testing.assert_allclose(ours[1]["train_loss"], theirs[1]["train_loss"], rtol=2e-3)
    np.testing.assert_allclose(
        metrics.load_predictions(workdir)["probs"], metrics.load_predictions(reference)["probs"], atol=1e-2
    )


def test_evaluate_and_predict_score_the_checkpoint_as_training_did(tiny_data, reference, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir)
    trained, trained_probs = metrics.load_results(reference), metrics.load_predictions(reference)["probs"]
    evaluated = run.run(config(tiny_data, mode="evaluate"), workdir)
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
    assert evaluated["params_sha256"] == trained["params_sha256"]
    np.testing.assert_allclose(metrics.load_predictions(workdir)["probs"], trained_probs, atol=1e-6)
    plain = run.run(config(tiny_data, mode="evaluate", tta_flip=False), workdir)  # scored apart from the run's
    apart = workdir / f"evaluate_step_{plain['checkpoint_step']}_tta_flip=False"
    assert not np.allclose(metrics.load_predictions(apart)["probs"], trained_probs, atol=1e-4)  # TTA was on

    test_images = data.load(config(tiny_data).data, seed=0).test.images[:5]
    np.save(tmp_path / "five.npy", test_images)
    rows = run.run(config(tiny_data, mode="predict", **{"predict.inputs": str(tmp_path / "five.npy")}), workdir)
    np.testing.assert_array_equal([r["class"] for r in rows], trained_probs[:5].argmax(-1))
    np.testing.assert_allclose([r["probability"] for r in rows], trained_probs[:5].max(-1), atol=1e-5)
