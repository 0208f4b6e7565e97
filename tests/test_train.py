"""fmnist_jax/training: the loop's maths, determinism, exact resume, evaluation padding and failure modes."""

import json
import os
import shutil
import signal
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, model_logits

from fmnist_jax import (
    checkpoints,
    compile_cache,
    config_lib,
    data,
    errors,
    files,
    metrics,
    ops,
    parallel,
    preemption,
    run,
)
from fmnist_jax.errors import ConfigError
from fmnist_jax.training import evaluate, loop
from fmnist_jax.training import plan as plan_lib
from fmnist_jax.training import state as train_state
from fmnist_jax.training import step as steps


def history_losses(workdir):
    return [r["train_loss"] for r in metrics.read_history(workdir)]


def test_chunks_respect_epoch_and_checkpoint_boundaries():
    assert list(loop.chunks(0, 20, 10, 4, 10)) == [4, 4, 2, 4, 4, 2]
    assert list(loop.chunks(3, 10, 10, 4, 5)) == [2, 4, 1]
    assert list(loop.chunks(0, 6, 3, 10, 100)) == [3, 3]
    # Epochs end at 9, 18, ..., checkpoints at 6, 12, ...: from step 18 the cuts repeat every 18 steps.
    assert list(loop.chunks(7, 100, 9, 5, 6)) == [2, 3, 5, 1] + [5, 1, 3, 3, 5, 1] * 4 + [5, 1, 3, 1]


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    key = jax.random.key(0)
    a, b = steps.epoch_permutation(key, 3, 100), steps.epoch_permutation(key, 3, 100)
    np.testing.assert_array_equal(a, b)
    assert sorted(np.asarray(a).tolist()) == list(range(100))
    assert not np.array_equal(a, steps.epoch_permutation(key, 4, 100))


def test_trains_tiny_data_and_writes_the_workdir(cnn_config, tmp_path):
    cnn_config.num_epochs = 4
    cnn_config.tensorboard.loss_every_steps = 2  # running-loss points during the epochs (their copies compiled ahead)
    start = time.perf_counter()
    results = run.run(cnn_config, tmp_path)
    wall = time.perf_counter() - start
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock",
        "checkpoints",
        "config.json",
        "history.jsonl",
        "predictions.npz",
        "results.json",
        "tensorboard",
    ]
    assert results == metrics.load_results(tmp_path)
    assert results["num_params"] == 438_026 and results["model"] == "seed_cnn"
    history = metrics.read_history(tmp_path)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and [r["step"] for r in history] == [4, 8, 12, 16]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # The bars that encode the classes are easy: four short epochs get far above chance (0.1).
    assert results["test_accuracy"] > 0.5 and results["validation_accuracy"] > 0.5
    predictions = metrics.load_predictions(tmp_path)
    assert predictions["probs"].shape == (100, 10)
    assert results["test_accuracy"] == pytest.approx(np.mean(predictions["probs"].argmax(1) == predictions["labels"]))
    assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 4
    # Where the seconds went: the phases in the order they ran, inside the call's wall time (the process's age
    # before it comes first); training holds the epochs' own seconds; the compilations are part of the phases.
    seconds = results["seconds"]
    phases = seconds["phases"]
    assert list(phases) == [
        *(["before_run"] if "before_run" in phases else []),
        "data",
        "setup",
        "restore",
        "compile",
        "training",
        "checkpoint_wait",
        "evaluation",
        "writing",
    ]
    assert sum(v for k, v in phases.items() if k != "before_run") <= wall
    assert phases["training"] >= results["train_seconds"] == pytest.approx(sum(r["seconds"] for r in history))
    # The train call and the evaluation (each run's own programs, compiled or loaded from the cache); the jitted
    # initialisation is compiled once per process, so an earlier run in this process may have paid for it.
    assert seconds["compilations"] >= 2 and 0 < seconds["compilation"] <= wall
    # The train calls, the evaluation and the copies (the state's, the running loss's) are compiled before the
    # training, which holds no compilation.
    by_phase = seconds["compilation_by_phase"]
    assert set(by_phase) == set(phases) - {"before_run"} and by_phase["compile"] > 0
    assert by_phase["training"] == by_phase["evaluation"] == 0
    assert sum(by_phase.values()) == pytest.approx(seconds["compilation"])


def test_the_loop_form_does_not_change_the_maths(cnn_config, finished_tiny_run, tmp_path, monkeypatch):
    """One call per step, unrolled scan, rolled scan -> equal to float tolerance. Run "a" is the session's finished
    tiny run (2 steps a call, rolled: `auto` on CPU with im2col convolutions; checkpoints every 2 steps). That the
    same config twice gives identical bits, histories and predictions is tests/test_fingerprint.py's
    `test_the_same_seeded_run_twice_gives_the_same_bits` (a fresh run against "a")."""
    unrolled = []  # what each run's programs were built with

    class Recorded(steps.Programs):
        def __init__(self, *args, unroll, **kwargs):
            unrolled.append(unroll)
            super().__init__(*args, unroll=unroll, **kwargs)

    monkeypatch.setattr(plan_lib, "Programs", Recorded)
    runs = {"a": (history_losses(finished_tiny_run), metrics.load_predictions(finished_tiny_run)["probs"])}
    for name, steps_per_call, unroll in [
        ("per_step", 1, "auto"),
        ("rolled", 4, "rolled"),  # 4 steps a call: one call per epoch
        ("unrolled", 4, "full"),
    ]:
        cnn_config.steps_per_call, cnn_config.scan_unroll = steps_per_call, unroll
        run.run(cnn_config, tmp_path / name)
        runs[name] = (history_losses(tmp_path / name), metrics.load_predictions(tmp_path / name)["probs"])
    assert unrolled == [False, False, True]
    # Measured (AVX-512 EPYC, also capped at AVX2): one call per step and the rolled scan give run "a"'s bits, the
    # unrolled scan probabilities within 6e-8 (XLA fuses across its steps); 1e-5 leaves other CPU kinds' fusions room.
    for other in ("per_step", "rolled", "unrolled"):
        np.testing.assert_allclose(runs[other][0], runs["a"][0], rtol=1e-5)
        np.testing.assert_allclose(runs[other][1], runs["a"][1], atol=1e-5)


def test_each_boundary_is_read_while_the_next_steps_are_queued(cnn_config, tmp_path, monkeypatch):
    """With host overlap (GPU, TPU) the host reads an epoch's end (its scores, history line, checkpoint) only once
    the train calls up to the next boundary are dispatched, so the devices train on while it logs and saves; without
    (CPU), at once. Either way every boundary is read in order with its history line and checkpoint written, and the
    runs end with the same bits and histories."""
    order = []
    real_train, real_finish = steps.Programs.train, loop.finish_boundary

    class Recorded:
        def __init__(self, program, n):
            self.program, self.n = program, n

        def lower(self, *args):
            return self.program.lower(*args)

        def __call__(self, state, inputs, first_step, first_batch):
            order.append(("train", int(first_step) + self.n))
            return self.program(state, inputs, first_step, first_batch)

    def finish(plan, store, writer, boundary, *args):
        order.append(("read", boundary.step, len(metrics.read_history(plan.workdir)), store.all_steps()))
        return real_finish(plan, store, writer, boundary, *args)

    monkeypatch.setattr(steps.Programs, "train", lambda self, n: Recorded(real_train(self, n), n))
    monkeypatch.setattr(loop, "finish_boundary", finish)
    cnn_config.num_epochs = 3  # 4 steps an epoch, 2 a call
    reads = [("read", 4, 0, []), ("read", 8, 1, [4]), ("read", 12, 2, [4, 8])]
    trains = [[("train", s) for s in pair] for pair in ((2, 4), (6, 8), (10, 12))]
    expected = {
        "on": [*trains[0], *trains[1], reads[0], *trains[2], reads[1], reads[2]],
        "off": [*trains[0], reads[0], *trains[1], reads[1], *trains[2], reads[2]],
    }
    shas = set()
    for overlap in ("on", "off"):
        order.clear()
        cnn_config.host_overlap = overlap
        shas.add(run.run(cnn_config, tmp_path / overlap)["params_sha256"])
        assert order == expected[overlap], overlap
        assert [r["step"] for r in metrics.read_history(tmp_path / overlap)] == [4, 8, 12]
    assert len(shas) == 1 and history_losses(tmp_path / "on") == history_losses(tmp_path / "off")


def test_the_call_queue_lets_the_host_run_at_most_two_calls_ahead(monkeypatch):
    """Before it queues another train call, the host waits for every call but the last one to have run (their
    marks, in order): a signal then stops the run within two calls. Without a mark (GPU, TPU, several processes)
    the host never waits."""
    waited = []
    monkeypatch.setattr(steps.jax, "block_until_ready", waited.append)
    queue, free = steps.CallQueue(lambda loss_sum: -loss_sum), steps.CallQueue(None)
    for call in range(1, 7):
        queue.queued(types.SimpleNamespace(loss_sum=call))
        free.queued(types.SimpleNamespace(loss_sum=call))
        assert waited == [-c for c in range(1, call)], call
    assert steps.CallQueue.DEPTH == 2


def test_each_epochs_validation_scores_the_state_at_its_end(finished_tiny_run, cnn_config):
    """An epoch's validation is dispatched before the next train call takes over (donates) its state: its scores
    are those of the checkpoint saved at its end, scored again afterwards."""
    history = metrics.read_history(finished_tiny_run)
    for record in history:  # epochs end at steps 4 and 8, both checkpointed
        cnn_config.checkpoint.step = record["step"]
        programs, state, _, _ = evaluate.restore_for_inference(cnn_config, finished_tiny_run, parallel.make_mesh())
        again = evaluate.evaluate_split(programs, state, data.load(cnn_config.data, seed=0).validation, batch_size=50)
        assert again["loss"] == pytest.approx(record["validation_loss"], rel=1e-6)
        assert again["accuracy"] == record["validation_accuracy"]
    assert history[0]["validation_loss"] != pytest.approx(history[1]["validation_loss"], rel=1e-3)


def test_more_epochs_on_resume_equal_a_longer_run(cnn_config, finished_tiny_run, tmp_path, monkeypatch):
    """A finished run given more epochs trains on to the longer run's bits; once it goes on, the shorter run's
    scores are gone (else a stop before its end left them marking it finished, for comparisons and the report)."""
    cnn_config.checkpoint.every_steps = 2  # as the finished tiny run: the 2-epoch run to match
    cnn_config.num_epochs = 1
    run.run(cnn_config, tmp_path / "short")
    cnn_config.num_epochs = 2
    with pytest.raises(ConfigError, match=r"num_epochs: 1 -> 2.*--config.resume_with_changes=True"):
        run.run(cnn_config, tmp_path / "short")
    cnn_config.resume_with_changes = True

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped before epoch 2")

    monkeypatch.setattr(loop, "_compile", stopped)
    with pytest.raises(RuntimeError, match="stopped before epoch 2"):
        run.run(cnn_config, tmp_path / "short")
    assert not {"results.json", "predictions.npz"} & {p.name for p in (tmp_path / "short").iterdir()}
    monkeypatch.undo()
    run.run(cnn_config, tmp_path / "short")
    assert history_losses(tmp_path / "short") == history_losses(finished_tiny_run)
    np.testing.assert_array_equal(
        metrics.load_predictions(tmp_path / "short")["probs"], metrics.load_predictions(finished_tiny_run)["probs"]
    )


def test_a_checkpoint_inside_an_epoch_counts_the_part_of_it_already_trained(finished_tiny_run):
    """Each checkpoint's training seconds are where a run resumed from it goes on counting: the one at step 6, half
    way through epoch 2, holds epoch 1's and part of epoch 2's."""
    store = checkpoints.CheckpointStore(finished_tiny_run / "checkpoints", async_save=False)
    meta = checkpoints.ocp.args.Composite(meta=checkpoints.ocp.args.JsonRestore())
    try:
        seconds = {s: store.manager.restore(s, args=meta)["meta"]["train_seconds"] for s in store.all_steps()}
    finally:
        store.close()
    epochs = [r["seconds"] for r in metrics.read_history(finished_tiny_run)]
    assert seconds[4] == pytest.approx(epochs[0]) and seconds[8] == pytest.approx(sum(epochs))
    assert seconds[4] < seconds[6] < seconds[8]
    assert metrics.load_results(finished_tiny_run)["train_seconds"] == pytest.approx(sum(epochs))


def test_a_run_resumed_at_its_last_step_shows_no_epoch_past_its_last(two_epoch_run, capsys):
    cnn_config, workdir = two_epoch_run
    (workdir / "results.json").unlink()  # stopped after its last checkpoint, before its results
    run.run(cnn_config, workdir)
    assert "epoch 3" not in capsys.readouterr().err and (workdir / "results.json").exists()


def test_a_signal_on_a_run_resumed_at_its_last_step_stops_with_its_checkpoint_saved(two_epoch_run, monkeypatch):
    """Restored at its last step (stopped before its results), nothing to train: a signal heard then ends the run
    at that step, saved (it was a save of a step Orbax already holds: a checkpoint error)."""
    cnn_config, workdir = two_epoch_run
    (workdir / "results.json").unlink()
    asked = []

    def heard(guard):  # after the restore, after the compilation: none; after the (empty) training: SIGTERM
        asked.append(1)
        return signal.SIGTERM if len(asked) >= 3 else None

    monkeypatch.setattr(preemption.PreemptionGuard, "heard", heard)
    with pytest.raises(errors.Interrupted) as stopped:
        run.run(cnn_config, workdir)
    assert (stopped.value.step, stopped.value.saved, len(asked)) == (8, True, 3)
    assert config_lib.checkpoint_steps(workdir)[-1] == 8 and not (workdir / "results.json").exists()


def test_a_signal_while_the_last_saves_commit_stops_the_run_with_every_step_saved(cnn_config, tmp_path, monkeypatch):
    """SIGTERM while the run waits for its last checkpoint: the run stops as during training (saved, the resume line
    from main.py), not with the signal's default action; the rerun scores it."""
    close, sent = checkpoints.CheckpointStore.close, []

    def signalled_close(store):  # the first close is the wait for the last saves
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        close(store)

    class DefaultAction(Exception):
        pass

    def default_action(signum, frame):  # in place of SIGTERM's default, which would end the test's process
        raise DefaultAction

    monkeypatch.setattr(checkpoints.CheckpointStore, "close", signalled_close)
    previous = signal.signal(signal.SIGTERM, default_action)
    try:
        with pytest.raises(errors.Interrupted) as stopped:
            run.run(cnn_config, tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (stopped.value.step, stopped.value.saved, stopped.value.signum) == (8, True, signal.SIGTERM)
    assert config_lib.checkpoint_steps(tmp_path)[-1] == 8 and not (tmp_path / "results.json").exists()
    monkeypatch.undo()
    assert run.run(cnn_config, tmp_path)["test_accuracy"] == metrics.load_results(tmp_path)["test_accuracy"]


def test_finished_run_is_not_retrained(two_epoch_run):
    cnn_config, workdir = two_epoch_run
    first = metrics.load_results(workdir)
    stamps = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file() and p.name != files.LOCK_FILE}
    assert run.run(cnn_config, workdir) == first
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_changed_maths_field_is_refused_even_with_the_flag(two_epoch_run):
    cnn_config, workdir = two_epoch_run
    cnn_config.learning_rate, cnn_config.resume_with_changes = 0.01, True
    with pytest.raises(
        ConfigError,
        match=r"learning_rate: 0.001 -> 0.01\); add --config.learning_rate=0.001 to go on with it as it "
        r"was, or use a new --workdir \(fields \['learning_rate'\] change what is computed\)\.$",
    ):
        run.run(cnn_config, workdir)


def test_nan_loss_stops_with_a_clear_error(cnn_config, tmp_path):
    cnn_config.learning_rate = 1e30
    with pytest.raises(errors.TrainingError, match=r"training loss became nan in epoch 1.*learning_rate"):
        run.run(cnn_config, tmp_path)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("batch_size", 0, r"config.batch_size=0 must be positive"),
        ("num_epochs", -1, r"config.num_epochs=-1 must be positive"),
        ("scan_unroll", "sometimes", r"config.scan_unroll='sometimes'"),
        ("host_overlap", "yes", r"config.host_overlap='yes' must be one of \('auto', 'on', 'off'\)"),
        ("kind", "gan", r"config.kind='gan' is not one of"),
        ("eval_batch_size", -5, r"config.eval_batch_size=-5 must be zero or more"),
        ("tensorboard.loss_every_steps", -1, r"config.tensorboard.loss_every_steps=-1 must be zero or more"),
        ("seed", -1, r"config.seed=-1 must be an integer from 0 to 2147483647 \(2\*\*31 - 1\)"),
        ("seed", 2**31, r"config.seed=2147483648 must be an integer from 0 to 2147483647"),  # JAX's int32 argument
        ("seed", True, r"^config\.seed=True must be an integer from 0 to 2147483647"),  # a bool is no seed
        ("ema_decay", 1.0, r"^config\.ema_decay=1\.0 must be below 1 \(0 turns it off\)\.$"),
        ("model.conv", "cudnn", r"config.model.conv='cudnn' must be one of \('auto', 'im2col', 'xla', 'taps'\)"),
        ("learning_rate", float("inf"), r"config.learning_rate=inf must be finite and positive"),
        ("adam.b1", 1.0, r"config.adam.b1=1.0 must be below 1"),
        ("adam.b2", -0.5, r"config.adam.b2=-0.5 must be zero or more"),
        ("adam.eps", 0.0, r"config.adam.eps=0.0 must be positive"),
    ],
)
def test_bad_config_values_name_the_field(cnn_config, tmp_path, field, value, match):
    section, _, name = field.rpartition(".")
    (cnn_config[section] if section else cnn_config)[name] = value
    with pytest.raises(ConfigError, match=match):
        run.run(cnn_config, tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_the_largest_seed_jax_takes_is_accepted():
    """2**31 - 1, the last int32: the bound of the range the refusal above names, not past it."""
    assert train_state.check_config(load_config("vgg_bn", seed=2**31 - 1)) is None


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("model.dropout", 1.5, r"config.model.dropout=1.5 must be below 1"),
        ("model.dropout", -0.5, r"config.model.dropout=-0.5 must be zero or more"),
        ("model.widths", (0, 0, 0), r"config.model.widths=\(0, 0, 0\) must be positive integers, one per stage"),
        ("model.depths", (), r"config.model.depths=\(\) must be positive integers"),
        ("model.head_width", -1, r"config.model.head_width=-1 must be zero or more"),
    ],
)
def test_the_stronger_cnns_bad_model_values_name_the_field(field, value, match):
    """Checked with the config, before the run writes anything (JAX failed at its first step with a traceback, or
    divided by zero); run.run calls this check first, as the CNN cases above show."""
    config = load_config("vgg_bn", **{field: value})
    with pytest.raises(ConfigError, match=match):
        train_state.check_config(config)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("steps_per_call", 0, r"config.steps_per_call=0 must be positive"),
        ("augment.translate", 14, r"config.augment.translate=14 must be below 14 pixels"),
    ],
)
def test_a_call_of_no_steps_and_a_shift_of_half_the_image_are_refused_by_the_check(field, value, match):
    """Called directly (run.run calls it first): a call of 0 steps would split the run into calls forever, and a
    shift of 14 pixels can move the garment out of the 28x28 frame."""
    with pytest.raises(ConfigError, match=match):
        train_state.check_config(load_config("vgg_bn", **{field: value}))


def test_train_metrics_count_the_images_trained_not_the_split(cnn_config, tmp_path):
    """250 training images in batches of 64: 3 steps, 192 images an epoch (each epoch's order leaves out another
    58); the epoch's train accuracy is a count of those 192."""
    cnn_config.data.num_train = 250
    run.run(cnn_config, tmp_path)
    history = metrics.read_history(tmp_path)
    assert [r["step"] for r in history] == [3, 6]
    for record in history:
        correct = record["train_accuracy"] * 192
        assert correct == pytest.approx(round(correct), abs=1e-6)


def test_a_resumed_epochs_speed_counts_the_steps_it_trained(two_epoch_run):
    """Resumed from step 6, half way through epoch 2, the run trains 2 of the epoch's 4 steps: its images per second
    count those 128 images, not the epoch's 256, over its seconds."""
    config, workdir = two_epoch_run
    shutil.rmtree(workdir / "checkpoints" / "8")
    (workdir / "results.json").unlink()
    run.run(config, workdir)
    last = metrics.read_history(workdir)[-1]
    assert last["step"] == 8 and last["images_per_second"] * last["seconds"] == pytest.approx(2 * config.batch_size)


def test_epoch_seconds_hold_the_training_alone_and_the_time_left_ends_at_zero(cnn_config, tmp_path, monkeypatch):
    """An epoch's seconds end when the devices finished it, before its validation (here 1,000 s on a stand-in clock:
    nothing waits for them); the log's time left is 0 after the last epoch."""
    offset, time_left = [0.0], []
    clock = types.SimpleNamespace(
        perf_counter=lambda: time.perf_counter() + offset[0],
        strftime=time.strftime,
        gmtime=lambda seconds: (time_left.append(seconds), time.gmtime(seconds))[1],
    )
    monkeypatch.setattr(loop, "time", clock)
    dispatch = evaluate.Evaluator.dispatch

    def slow_validation(self, *args):
        offset[0] += 1000.0
        return dispatch(self, *args)

    monkeypatch.setattr(evaluate.Evaluator, "dispatch", slow_validation)
    cnn_config.host_overlap = "off"  # (with it, the host reads an epoch's end later: its seconds shift)
    run.run(cnn_config, tmp_path)
    assert all(0 < r["seconds"] < 1000 for r in metrics.read_history(tmp_path))
    assert len(time_left) == 2 and time_left[0] > 0 and time_left[-1] == 0


def test_eval_batch_zero_picks_by_backend_is_at_most_the_images_and_rounds_to_the_devices(cnn_config):
    mesh = parallel.make_mesh()
    cnn_config.eval_batch_size = 0
    assert evaluate.eval_batch_size(cnn_config, mesh) == (100 if jax.default_backend() == "cpu" else 1000)

    def devices(platform: str, n: int):  # a stand-in mesh: eval_batch_size reads its devices only
        return types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform=platform)] * n, dtype=object))

    for platform, n, asked, expected in [
        ("cpu", 8, 30, 32),
        ("cpu", 8, 0, 104),
        ("cpu", 1, 30, 30),
        ("gpu", 8, 0, 1000),
        ("tpu", 3, 0, 1002),
        ("gpu", 4, 64, 64),
    ]:
        cnn_config.eval_batch_size = asked
        assert evaluate.eval_batch_size(cnn_config, devices(platform, n)) == expected, (platform, n, asked)
    # At most the images scored (then rounded to the devices): an absurd batch allocated 784 TiB after an epoch.
    cnn_config.eval_batch_size = 2**40
    assert evaluate.eval_batch_size(cnn_config, devices("cpu", 1), 10_000) == 10_000
    assert evaluate.eval_batch_size(cnn_config, devices("cpu", 8), 3) == 8
    assert evaluate.eval_batch_size(cnn_config, devices("cpu", 1), 0) == 1


def test_every_auto_choice_on_one_tpu_chip():
    """Colab's TPUs are one chip now (v5e-1, v6e-1): what each `auto` field picks on that backend, with stand-ins
    for the backend's name and its one device (no TPU here)."""
    chip = types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform="tpu")], dtype=object))
    config = load_config("speedrun")
    assert config.eval_batch_size == 0 and evaluate.eval_batch_size(config, chip) == 1000
    assert ops.resolve_conv(config.model.conv, "tpu") == "xla"  # training: XLA's convolutions, not patch products
    assert ops.resolve_conv(config.model.conv, "tpu", training=False, in_channels=1) == "xla"  # CPU: "taps"
    assert steps.resolve_unroll(config.scan_unroll, "tpu", config.model.conv) is False  # a rolled scan
    assert steps.resolve_unroll(config.scan_unroll, "cpu", "xla") is True  # the CPU's exception, for contrast
    assert plan_lib.resolve_host_overlap(config.host_overlap, "tpu") is True  # the host logs while the chip trains
    assert plan_lib.resolve_host_overlap(config.host_overlap, "cpu") is False
    assert plan_lib.resolve_host_overlap("on", "cpu") is True and plan_lib.resolve_host_overlap("off", "gpu") is False
    assert plan_lib.resolve_host_overlap(config.host_overlap, "tpu", processes=2) is False  # a pod's hosts: at once
    assert plan_lib.resolve_host_overlap("on", "gpu", devices=8) is True  # each GPU runs its own share
    assert plan_lib.resolve_host_overlap("auto", "cpu", devices=8) is False
    with pytest.raises(
        ConfigError, match=r"host_overlap='on' over 8 CPU devices: .*deadlock XLA:CPU .*'auto' or 'off'"
    ):
        plan_lib.resolve_host_overlap("on", "cpu", devices=8)  # train calls in flight together, each with a collective
    assert compile_cache.resolve(config.compilation_cache, "tpu", None) == str(compile_cache.default_dir())


def test_a_batch_the_devices_cannot_split_is_told_the_nearest_that_they_can():
    """The multiples of the device count on either side of the batch; below the device count, the count alone."""
    mesh = types.SimpleNamespace(devices=np.empty(8, object))  # check_batch_size reads the devices' count alone
    for batch, nearest in ((60, "56 or 64"), (4, "8"), (0, "8")):
        with pytest.raises(
            errors.ParallelError, match=rf"use a multiple of 8 \(e\.g\. {nearest}\) or run on fewer devices"
        ):
            parallel.check_batch_size(batch, mesh)
    parallel.check_batch_size(64, mesh)


def test_batch_larger_than_the_data_is_an_error_whose_fix_works(cnn_config, tmp_path):
    cnn_config.batch_size = 512
    with pytest.raises(ConfigError, match=r"config\.batch_size=512 exceeds the 256 training images") as refused:
        run.run(cnn_config, tmp_path / "a")
    assert "num_train" not in str(refused.value)  # every image not held out is already taken
    assert "lower it or hold fewer images out for validation (config.data.validation_size=64)" in str(refused.value)
    cnn_config.batch_size, cnn_config.data.num_train = 128, 100
    with pytest.raises(ConfigError, match=r"100 training images; lower it or raise config.data.num_train or hold"):
        run.run(cnn_config, tmp_path / "b")


# The evaluation batch of the padding test: the tiny run's (fingerprints.tiny_config), so that its evaluation
# program is the one the tiny run compiled.
EVAL_BATCH = 50


@pytest.fixture(scope="module")
def unpadded():
    """The study CNN's fresh state on the devices, its `Programs`, 120 random images and labels, and their logits
    from one jitted forward pass over all 120 at once (no padding), as float64."""
    config = load_config("cnn")
    graphs, state, _ = train_state.create_train_state(config)
    mesh = parallel.make_mesh()
    recipe = train_state.Recipe.from_config(config)
    programs = steps.Programs(graphs, mesh, config.batch_size, unroll=False, recipe=recipe)
    rng = np.random.default_rng(0)
    n = 120
    split = data.Split(rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))
    logits = model_logits(graphs.merge(state)[0], steps.to_inputs(jnp.asarray(split.images)))
    return programs, parallel.replicate(state, mesh), split, np.asarray(logits, np.float64)


@pytest.mark.heavy
@pytest.mark.parametrize("n", [120, 50, 20])  # several batches, the last padded; one exact batch; one padded batch
def test_padded_evaluation_equals_unpadded(unpadded, n):
    programs, state, split, logits = unpadded
    images, labels, logits = split.images[:n], split.labels[:n], logits[:n]
    out = evaluate.evaluate_split(programs, state, data.Split(images, labels), batch_size=EVAL_BATCH)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    np.testing.assert_allclose(out["probs"], np.exp(log_probs), atol=1e-6)
    assert out["loss"] == pytest.approx(-np.mean(log_probs[np.arange(n), labels]), rel=1e-5)
    assert out["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_training_on_every_image_reports_no_validation_numbers(cnn_config, tmp_path):
    """validation_size=0 (the stronger CNN's final runs train on all 60k): None, never NaN, in every file. The run
    keeps 256 of the 320 images, so that it has the tiny run's shapes (4 steps an epoch) and compiled programs."""
    cnn_config.data.validation_size = 0
    cnn_config.data.num_train = 256
    results = run.run(cnn_config, tmp_path / "run")
    assert results["validation_accuracy"] is None and results["validation_loss"] is None
    assert results["test_accuracy"] > 0.3
    assert [(r["validation_loss"], r["validation_accuracy"]) for r in metrics.read_history(tmp_path / "run")] == [
        (None, None)
    ] * 2
    assert "NaN" not in (tmp_path / "run" / "results.json").read_text()
    from fmnist_jax import report

    paths = report.build([tmp_path / "run"], tmp_path / "report")
    summary = next(line for line in paths["markdown"].read_text().splitlines() if line.startswith("| CNN (Flax)"))
    assert "n/a" in summary
