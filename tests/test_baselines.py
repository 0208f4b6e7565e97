"""baselines.py: estimators built from config, fitted, scored with the shared metrics, reused, errors."""

import errno
import json
import logging
import pathlib
import shlex
import signal
import subprocess
import sys

import helpers
import joblib
import numpy as np
import pytest
import sklearn
from helpers import ROOT, last_line, load_config, run_main

from fmnist_jax import baselines, config_lib, data, files, metrics, run, search
from fmnist_jax.errors import ConfigError, DataError, Interrupted


def tiny(name, tiny_data, **overrides):
    return load_config(name, **{"data.dir": str(tiny_data), "data.validation_size": 64, **overrides})


def test_baselines_module_never_imports_jax():
    code = "import sys, fmnist_jax.baselines, fmnist_jax.search, fmnist_jax.run; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("config", ["random_forest", "compare"])
def test_a_run_without_jax_launched_on_several_ranks_runs_in_the_first_alone(tiny_data, tmp_path, config):
    """`srun -n 2 python main.py --config=configs/random_forest.py`: the second task writes nothing (neither the
    workdir nor a file in it, where the first one's atomic writes and lock are) and says why; a comparison of
    baselines alone likewise. The first task runs as one process would (the other tests)."""
    workdir = tmp_path / "run"
    if config == "compare":
        fields = [f"--config.members.{cnn}.enabled=False" for cnn in ("cnn", "vgg_bn", "speedrun")]
    else:
        fields = [f"--config.data.dir={tiny_data}", "--config.data.validation_size=64"]
    result = run_main(
        f"--config=configs/{config}.py",
        f"--workdir={workdir}",
        *fields,
        env={"SLURM_PROCID": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    said = f"(SLURM_PROCID=1): a {load_config(config).kind} run is one process's, and the first runs it in {workdir}"
    assert said in result.stderr and "nothing to do here" in result.stderr and not workdir.exists()


def test_forest_is_the_studys(tiny_data):
    forest = baselines.create_estimator(tiny("random_forest", tiny_data))[-1]
    assert (forest.n_estimators, forest.max_features, forest.n_jobs, forest.random_state) == (100, "sqrt", -1, 0)


@pytest.mark.parametrize(
    "preprocess, dual, steps",
    [("none", "true", []), ("scale", "auto", ["scale"]), ("standardize", "false", ["standardize"])],
)
def test_svm_preprocessing_and_solver(tiny_data, preprocess, dual, steps):
    est = baselines.create_estimator(tiny("linear_svm", tiny_data, preprocess=preprocess, **{"model.dual": dual}))
    assert [name for name, _ in est.steps] == [*steps, "model"]
    assert est[-1].dual == {"true": True, "auto": "auto", "false": False}[dual]
    assert est[-1].random_state == 0 and est[-1].max_iter == 1000


def test_forest_trains_scores_and_is_reused(tiny_data, tmp_path):
    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 25})
    results = run.run(config, tmp_path)
    assert results == metrics.load_results(tmp_path)
    assert results["test_accuracy"] > 0.8  # the class bars are easy for trees
    forest = baselines.load_estimator(tmp_path)[-1]
    assert len(forest.estimators_) == 25
    assert results["num_params"] == sum(t.tree_.node_count for t in forest.estimators_)
    held_out = data.load(config.data, seed=config.seed).validation
    val_pred, _ = baselines.predict(baselines.load_estimator(tmp_path), baselines.flatten(held_out.images))
    assert results["validation_accuracy"] == np.mean(val_pred == held_out.labels) and len(held_out) == 64
    saved = metrics.load_predictions(tmp_path)
    # The metric took float64 rows; the saved ones are float32, each summing to 1 within 6e-8. Normalised again,
    # every log moves by at most 2^-23 of itself, so the mean agrees to that relative; unnormalised, to 6e-8 / loss.
    probs = saved["probs"].astype(np.float64)
    picked = (probs / probs.sum(1, keepdims=True))[np.arange(len(probs)), saved["labels"]]
    assert results["log_loss"] == pytest.approx(-np.mean(np.log(np.clip(picked, 1e-15, None))), rel=1e-6)
    assert {"labels", "preds", "probs", "error_images", "sample_images"} <= set(saved)
    np.testing.assert_array_equal(saved["probs"].argmax(1), saved["preds"])
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    assert run.run(config, tmp_path) == results  # a finished run reports instead of refitting
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp


def test_a_refused_rerun_leaves_the_runs_config_as_it_was(tiny_data, tmp_path, monkeypatch, caplog):
    """A rerun with another data.dir (operational: allowed) that cannot read its data is refused and leaves
    config.json as it was, naming the data the model was fitted on; the first command then scores that model. Where
    config.json cannot be put back, the refusal is still the error shown, the failed put-back a warning."""
    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 5})
    trained = run.run(config, tmp_path)
    (tmp_path / metrics.RESULTS_FILE).unlink()  # as if stopped between the fit and its scores
    saved = (tmp_path / "config.json").read_bytes()
    with pytest.raises(DataError, match="no_data"):
        run.run(tiny("random_forest", tmp_path / "no_data", **{"model.n_estimators": 5}), tmp_path)
    assert (tmp_path / "config.json").read_bytes() == saved
    real_write, written = files.atomic_write_text, []

    def full_at_the_put_back(path, text):  # config.json written, then not put back: the disk filled meanwhile
        written.append(path.name)
        if written.count("config.json") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, text)

    monkeypatch.setattr(files, "atomic_write_text", full_at_the_put_back)
    caplog.set_level(logging.WARNING)
    with pytest.raises(DataError, match="no_data"):  # the start's own error, not the put-back's
        run.run(tiny("random_forest", tmp_path / "no_data", **{"model.n_estimators": 5}), tmp_path)
    assert written == [".config.json.before", "config.json", "config.json"] and "No space left" in caplog.text
    assert f"{tmp_path / 'config.json'} could not be put back" in caplog.text
    monkeypatch.undo()
    assert run.run(config, tmp_path)["test_accuracy"] == trained["test_accuracy"]
    assert (tmp_path / "config.json").read_bytes() == saved  # the next start put it back


def test_a_full_disk_names_what_the_rerun_of_a_baselines_training_or_scoring_does(tiny_data, tmp_path, monkeypatch):
    """A baseline keeps no checkpoint: its full-disk line says the rerun fits again; `evaluate`'s says the trained
    run is as it was (not a checkpoint to resume from, which the CNN's line names)."""
    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 5})
    real_write = files.atomic_write_bytes

    def full_for(name):
        def write(path, content):
            if pathlib.Path(path).name == name:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(path, content)

        return write

    monkeypatch.setattr(files, "atomic_write_bytes", full_for(config_lib.MODEL_FILE))
    with pytest.raises(files.DiskFull) as caught:
        run.run(config, tmp_path)
    assert str(caught.value) == (
        f"the disk holding {tmp_path} is full (no space left while writing its files); free some space and rerun the "
        "same command: it fits the model again (a baseline keeps no checkpoint)."
    )
    monkeypatch.setattr(files, "atomic_write_bytes", real_write)
    trained = run.run(config, tmp_path)
    monkeypatch.setattr(files, "atomic_write_bytes", full_for(metrics.RESULTS_FILE))
    config.mode = "evaluate"
    with pytest.raises(
        files.DiskFull, match="rerun the same command: it runs evaluate again on the trained run, which"
    ):
        run.run(config, tmp_path)
    assert metrics.load_results(tmp_path)["test_accuracy"] == trained["test_accuracy"]


def test_sigterm_while_a_baseline_is_scored_ends_it_at_once_saying_so(tiny_data, tmp_path):
    """`evaluate` (as `predict`, and a CNN's final scoring) has no safe point to stop at: SIGTERM ends it at once with
    the line and the command to go on with, not silently as SIGTERM's default would; the model and its earlier scores
    stay as they were."""
    fields = {"data.dir": str(tiny_data), "data.validation_size": 64, "model.n_estimators": 5}
    trained = run.run(tiny("random_forest", tiny_data, **{"model.n_estimators": 5}), tmp_path)
    before = helpers.snapshot(tmp_path)
    args = helpers.main_args("random_forest", tmp_path, {**fields, "mode": "evaluate"})
    result = helpers.run_interrupted("TERM", 0, "scoring", *args)  # as results.json is about to be written
    assert result.returncode == 128 + signal.SIGTERM and "Traceback" not in result.stderr, result.stderr[-2000:]
    line, rerun = result.stderr.strip().splitlines()[-2:]
    assert line == "interrupted (SIGTERM, before the run had finished). Go on with the same command:"
    assert rerun.endswith(shlex.join(args))
    assert {k: v for k, v in helpers.snapshot(tmp_path).items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }
    assert metrics.load_results(tmp_path)["test_accuracy"] == trained["test_accuracy"]


def test_warm_started_forest_equals_one_fit(tiny_data):
    from fmnist_jax import data

    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 23})
    ds = data.load(config.data, seed=0)
    x, y = baselines.flatten(ds.train.images), ds.train.labels
    progressive, single = baselines.create_estimator(config), baselines.create_estimator(config)
    baselines.fit(progressive, x, y)
    single.fit(x, y)
    xt = baselines.flatten(ds.test.images)
    np.testing.assert_array_equal(progressive.predict_proba(xt), single.predict_proba(xt))


def test_svm_reports_non_convergence(tiny_data, tmp_path):
    config = tiny("linear_svm", tiny_data, preprocess="none", **{"model.dual": "true", "model.max_iter": 2})
    results = run.run(config, tmp_path)
    assert results["converged"] is False and results["n_iter"] == 2
    assert results["num_params"] == 784 * 10 + 10 and results["log_loss"] is None
    assert results["test_accuracy"] == pytest.approx(
        np.mean(metrics.load_predictions(tmp_path)["preds"] == metrics.load_predictions(tmp_path)["labels"])
    )


def test_svm_converges_on_scaled_pixels(tiny_data, tmp_path):
    results = run.run(tiny("linear_svm", tiny_data), tmp_path)
    assert results["converged"] is True and results["test_accuracy"] > 0.8


def test_evaluate_mode_rescores_the_saved_model(tiny_data, tmp_path, monkeypatch):
    """Scored again, as on another machine: the same scores, results.json naming the machine that scored
    (`machine`) and the one that fitted (`trained_on`, as a CNN run's lineage)."""
    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 10})
    trained = run.run(config, tmp_path)
    here = baselines.run_machine()
    assert here.startswith("cpu: ") and here.endswith(f"; scikit-learn {sklearn.__version__}")
    assert trained["machine"] == here and trained["trained_on"] == [{"machine": here, "from_step": 0}]
    (tmp_path / "results.json").unlink()
    config.mode = "evaluate"
    monkeypatch.setattr(baselines, "run_machine", lambda: "cpu: another")
    evaluated = run.run(config, tmp_path)
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]
    assert evaluated["machine"] == "cpu: another" and evaluated["trained_on"] == trained["trained_on"]


def test_a_fitted_model_is_never_scored_on_other_data_or_another_sources_split(tiny_data, tmp_path):
    """fit.json records the data a model was fitted on: scoring it again (evaluate, or a rerun stopped before its
    scores) on other files, or on the same images from another source (TFDS gives them in another order: another
    split, whose validation images it was fitted on), is refused, naming why."""
    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 5})
    run.run(config, tmp_path)
    fit = json.loads((tmp_path / baselines.FIT_FILE).read_text())
    assert fit["dataset_checksums"] == metrics.load_results(tmp_path)["dataset_checksums"]
    (tmp_path / metrics.RESULTS_FILE).unlink()  # stopped between its fit and its scores
    for fitted_on, why in (
        ({**fit["dataset_checksums"], "train-images-idx3-ubyte": "0" * 64}, "train-images-idx3-ubyte differ"),
        ({"tfds:fashion_mnist": "0" * 64}, "it read them as tfds:fashion_mnist, not as t10k-images-idx3-ubyte and"),
    ):
        (tmp_path / baselines.FIT_FILE).write_text(json.dumps({**fit, "dataset_checksums": fitted_on}))
        with pytest.raises(ConfigError, match=f"model.joblib was fitted on other data than is read now \\({why}"):
            run.run(config, tmp_path)
    (tmp_path / baselines.FIT_FILE).write_text(json.dumps(fit))
    assert run.run(config, tmp_path)["dataset_checksums"] == fit["dataset_checksums"]
    other = helpers.write_idx_dataset(tmp_path.parent / f"{tmp_path.name}_other", n_train=320, n_test=100, seed=1)
    saved = (tmp_path / "config.json").read_bytes()  # finished: its command on other files is refused, not reported
    with pytest.raises(ConfigError, match=r"model\.joblib was fitted on other data than is read now"):
        run.run(tiny("random_forest", other, **{"model.n_estimators": 5}), tmp_path)
    assert (tmp_path / "config.json").read_bytes() == saved
    # A model saved before fit.json existed, its results.json keyed by the files' names as stored (.gz): scored.
    (tmp_path / baselines.FIT_FILE).unlink()
    scored = metrics.load_results(tmp_path)
    older = {f"{name}.gz": digest for name, digest in scored["dataset_checksums"].items()}
    metrics.save_results(tmp_path, {**scored, "dataset_checksums": older})
    config.mode = "evaluate"
    assert run.run(config, tmp_path)["test_accuracy"] == scored["test_accuracy"]


def test_a_fit_stopped_before_its_scores_or_with_damaged_scores_is_scored_again_not_refitted(tiny_data, tmp_path):
    """model.joblib's fit.json keeps what the fit reported (seconds, convergence), so a run without a readable
    results.json (a stop between fit and scores, a damaged file) is scored again with them; evaluate keeps them."""
    config = tiny("linear_svm", tiny_data, preprocess="none", **{"model.dual": "true", "model.max_iter": 2})
    trained = run.run(config, tmp_path)
    model, kept = tmp_path / baselines.MODEL_FILE, ("test_accuracy", "confusion_matrix", "train_seconds", "n_iter")
    stamp = model.stat().st_mtime_ns
    for damage in (lambda path: path.unlink(), lambda path: path.write_text('{"test_accuracy": 0.9')):
        damage(tmp_path / metrics.RESULTS_FILE)
        again = run.run(config, tmp_path)
        assert {k: again[k] for k in kept} == {k: trained[k] for k in kept} and again["converged"] is False
        assert metrics.load_results(tmp_path) == again and model.stat().st_mtime_ns == stamp  # not refitted
    (tmp_path / metrics.RESULTS_FILE).unlink()
    config.mode = "evaluate"
    evaluated = run.run(config, tmp_path)
    assert {k: evaluated[k] for k in kept} == {k: trained[k] for k in kept} and evaluated["converged"] is False
    (tmp_path / baselines.FIT_FILE).write_text("[]")  # not a record: the results.json's fields are used
    assert {k: run.run(config, tmp_path)[k] for k in kept} == {k: trained[k] for k in kept}
    (tmp_path / metrics.RESULTS_FILE).unlink()
    (tmp_path / baselines.FIT_FILE).unlink()  # a model saved before fit.json existed: its fit's seconds unknown
    rescored = run.run(config, tmp_path)
    assert rescored["train_seconds"] is None
    assert rescored["trained_on"] is None and rescored["machine"] == baselines.run_machine()  # the fit's: unknown
    (tmp_path / metrics.RESULTS_FILE).write_text("{")  # and damaged: scored again, not refitted
    config.mode = "train"
    again = run.run(config, tmp_path)
    assert again["train_seconds"] is None and model.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "name, field, value, match",
    [
        ("random_forest", "model.n_estimators", -5, r"config.model.n_estimators=-5 must be positive"),
        ("random_forest", "model.max_depth", 0, r"config.model.max_depth=0 must be positive"),
        ("linear_svm", "model.C", 0.0, r"config.model.C=0.0 must be positive"),
        ("linear_svm", "model.dual", "maybe", r"config.model.dual='maybe' must be"),
        ("linear_svm", "preprocess", "pca", r"config.preprocess='pca' must be one of"),
        ("random_forest", "seed", -1, r"config.seed=-1 must be an integer from 0 to 2147483647 \(2\*\*31 - 1\)"),
        ("linear_svm", "seed", 2**32, r"config.seed=4294967296 must be an integer from 0 to 2147483647"),
        ("random_forest", "model.criterion", "gin", r"config.model.criterion='gin' is rejected by scikit-learn: The"),
        ("random_forest", "model.n_jobs", 0, r"config.model.n_jobs=0 must be a number of processes, or -1"),
        ("random_forest_search", "search.factor", 1, r"config.search.factor=1 must be a number above 1"),
        ("random_forest_search", "search.method", "random", r"config.search.method='random' must be one of"),
        (  # the validation images trained on would score the settings
            "random_forest_search",
            "data.use_validation_for_training",
            True,
            r"a search scores settings on the validation split: .*use_validation_for_training=False",
        ),
    ],
)
def test_bad_values_name_the_field(tiny_data, tmp_path, name, field, value, match):
    config = tiny(name, tiny_data, **{field: value})
    with pytest.raises(ConfigError, match=match):
        run.run(config, tmp_path)


@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("100", 100), ("None", None), ("log2", "log2")])
def test_max_features_given_as_text_on_the_command_line_is_what_scikit_learn_takes(tiny_data, text, value):
    """The field holds a string ("sqrt"), so a number or None set with --config.model.max_features comes as text:
    it reaches scikit-learn as the number, or None, it names."""
    config = tiny("random_forest", tiny_data, **{"model.max_features": text})
    assert baselines.create_estimator(config)[-1].max_features == value


def test_unknown_estimator_field_is_named(tiny_data, tmp_path):
    config = tiny("random_forest", tiny_data)
    config.model.n_trees = 10
    with pytest.raises(ConfigError, match=r"fields \['n_trees'\] that random_forest does not take"):
        run.run(config, tmp_path)


@pytest.mark.slow
def test_forest_on_the_real_data(real_data_dir, tmp_path):
    config = load_config("random_forest", **{"data.dir": str(real_data_dir), "model.n_estimators": 20})
    results = run.run(config, tmp_path)
    # The study's 100 trees reached 0.879; 20 trees lose about a point. Far above it would mean test images leaked
    # into training, far below a broken feature pipeline.
    assert 0.85 <= results["test_accuracy"] <= 0.885
    assert results["per_class"]["Trouser"]["recall"] > results["per_class"]["Shirt"]["recall"]


def test_predict_mode_classifies_own_images(tiny_data, tmp_path, capsys):
    from helpers import make_images

    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 15})
    run.run(config, tmp_path)
    images = make_images(np.array([3, 7]), np.random.default_rng(5))  # bars of classes 3 and 7
    np.save(tmp_path / "two.npy", images)
    config.mode, config.predict.inputs = "predict", str(tmp_path / "two.npy")
    rows = run.run(config, tmp_path)
    assert [r["class"] for r in rows] == [3, 7] and [r["name"] for r in rows] == ["Dress", "Sneaker"]
    assert all(0 < r["probability"] <= 1 for r in rows)
    assert f"{tmp_path / 'two.npy'}[1]: 7 Sneaker" in capsys.readouterr().out


def test_training_on_validation_reports_no_validation_accuracy(tiny_data, tmp_path):
    config = tiny(
        "random_forest",
        tiny_data,
        **{"model.n_estimators": 5, "model.bootstrap": False, "data.use_validation_for_training": True},
    )
    results = run.run(config, tmp_path)
    assert results["validation_accuracy"] is None and results["num_train_images"] == 256 + 64
    assert sum(tree.tree_.n_node_samples[0] for tree in baselines.load_estimator(tmp_path)[-1].estimators_) == 5 * 320


def test_a_forest_trained_without_some_classes_predicts_their_labels(tiny_data, tmp_path):
    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 5, "data.num_train": 6})
    seen = sorted(set(data.load(config.data, seed=config.seed).train.labels.tolist()))
    assert 1 < len(seen) < 10  # some classes never seen in training
    results = run.run(config, tmp_path)
    saved = metrics.load_predictions(tmp_path)
    unseen = sorted(set(range(10)) - set(seen))
    assert saved["probs"].shape[1] == 10 and (saved["probs"][:, unseen] == 0).all()
    assert set(saved["preds"].tolist()) <= set(seen) and (saved["preds"] == saved["probs"].argmax(1)).all()
    assert results["test_accuracy"] == pytest.approx(np.mean(saved["preds"] == saved["labels"]))


def test_training_images_of_one_class_are_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"hold one class only; .*raise config.data.num_train"):
        run.run(tiny("linear_svm", tiny_data, **{"data.num_train": 1}), tmp_path)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.FitFailedWarning", "ignore:One or more of the test scores")
def test_a_search_skips_settings_that_fail_and_names_a_grid_where_all_do(tiny_data, tmp_path):
    # Each value passes the parameter checks; liblinear refuses the combination penalty=l1 with loss=hinge only
    # when it fits, and the search scores that failed fit as NaN.
    config = tiny("linear_svm_search", tiny_data, **{"model.loss": "hinge", "model.dual": "true"})
    config.search.grid = {"penalty": ("l1", "l2")}
    results = run.run(config, tmp_path / "one_fails")
    assert results["search"]["best_params"] == {"penalty": "l2"}
    assert [row["validation_accuracy"] is None for row in results["search"]["grid"]] == [True, False]  # not NaN
    config.search.grid = {"penalty": ("l1",)}
    with pytest.raises(ConfigError, match=r"^config.search.grid: none of its settings of \['penalty'\] can be fitted"):
        run.run(config, tmp_path / "all_fail")  # found before any data is read or any fit starts
    assert not (tmp_path / "all_fail").exists()
    with pytest.MonkeyPatch.context() as patch:  # a failure of every fit found by the search itself
        patch.setattr(baselines, "_check_svm_form", lambda *args: None)
        with pytest.raises(ConfigError, match=r"every setting failed to fit .*Fix the grid's values"):
            run.run(config, tmp_path / "all_fail")


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"model.loss": "hinge", "model.dual": "false"}, "penalty='l2', loss='hinge' and dual='false'"),
        ({"model.penalty": "l1", "model.loss": "hinge"}, "penalty='l1', loss='hinge' and dual='auto'"),
        ({"model.penalty": "l1", "model.dual": "true"}, "penalty='l1', loss='squared_hinge' and dual='true'"),
    ],
)
def test_a_linear_svm_form_liblinear_has_no_solver_for_is_refused_before_the_data_is_read(
    tiny_data, tmp_path, fields, named
):
    """scikit-learn checks penalty, loss and dual together only when a fit starts (a traceback, and in a comparison
    after the members before it had trained); here, before anything is read or written."""
    config = tiny("linear_svm", tiny_data, **{"data.dir": str(tmp_path / "no_data"), **fields})
    with pytest.raises(ConfigError, match=rf"^config.model: LinearSVC cannot fit {named} together \(.*; it fits "):
        run.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    fine = tiny("linear_svm", tiny_data, **{**fields, "model.dual": "auto", "model.penalty": "l2"})
    baselines.check_config(fine)  # l2 with either loss, dual chosen by scikit-learn: fits


@pytest.mark.parametrize(
    "name, field, values, rejected",
    [
        ("linear_svm_search", "loss", ("hinge", "cubic"), "'cubic'"),  # scikit-learn's parameter validation
        ("random_forest_search", "max_features", ("sqrt", "most"), "'most'"),
        ("random_forest_search", "n_estimators", (10, 0), "0"),  # our bound: config.model.n_estimators > 0
    ],
)
def test_a_grid_value_that_cannot_run_is_refused_before_any_fit(tiny_data, tmp_path, name, field, values, rejected):
    config = tiny(name, tiny_data)
    config.search.grid = {field: values}
    with pytest.raises(ConfigError, match=rf"^config\.search\.grid\.{field}: the value {rejected} is rejected \("):
        run.run(config, tmp_path)
    assert not (tmp_path / baselines.MODEL_FILE).exists()


def test_a_search_fits_each_setting_on_the_training_split_and_scores_it_on_the_validation_split(tiny_data):
    config = tiny("random_forest_search", tiny_data, **{"search.method": "grid"})
    config.search.grid = {"n_estimators": (2, 4), "max_depth": (3,)}
    dataset = data.load(config.data, seed=config.seed)
    best, record = search.search(config, dataset)
    for row in record["grid"]:  # as one fit of that setting on the 256 training images, scored on the 64 others
        one = baselines.create_estimator(config).set_params(**{f"model__{k}": v for k, v in row["params"].items()})
        one.fit(baselines.flatten(dataset.train.images), dataset.train.labels)
        expected = np.mean(one.predict(baselines.flatten(dataset.validation.images)) == dataset.validation.labels)
        assert row["validation_accuracy"] == expected
    top = max(record["grid"], key=lambda row: row["validation_accuracy"])  # the first of the best, as the search
    assert best == top["params"] and record["best_validation_accuracy"] == top["validation_accuracy"]


def test_a_halving_searchs_rounds_draw_their_images_from_the_runs_seed(tiny_data):
    """HalvingGridSearchCV draws each round's training images with its `random_state`: the run's seed, so that a
    search run again gives the same rows (scikit-learn would otherwise draw from NumPy's global generator)."""
    grid = {"search.grid.n_estimators": (2, 4), "search.grid.max_features": ("sqrt", 0.1)}
    config = tiny("random_forest_search", tiny_data, **grid)
    dataset = data.load(config.data, seed=config.seed)

    def rows():
        return [
            {k: v for k, v in row.items() if k != "fit_seconds"} for row in search.search(config, dataset)[1]["grid"]
        ]

    first = rows()
    assert {row["round"] for row in first} == {0, 1} and first == rows()


def test_a_grid_of_solver_choices_is_searched_as_the_estimator_takes_them(tiny_data, tmp_path):
    """config.model.dual's strings are converted for each setting as for one fit ("false" is False, which LinearSVC
    takes; the string itself failed every fit of that setting, and the search chose among the rest)."""
    config = tiny("linear_svm_search", tiny_data, **{"search.method": "grid"})
    config.search.grid = {"dual": ("auto", "false")}
    grid = run.run(config, tmp_path)["search"]["grid"]
    assert [g["params"]["dual"] for g in grid] == ["auto", False]
    assert all(g["validation_accuracy"] is not None for g in grid)
    l1 = tiny("linear_svm_search", tiny_data, **{"model.penalty": "l1", "model.dual": "true"})  # l1 fits primal only
    l1.search.grid = {"dual": ("true", "false")}
    baselines.check_config(l1)  # the grid's settings of dual are probed, not the model's own
    l1.search.grid = {"dual": ("true",)}
    with pytest.raises(ConfigError, match=r"^config\.search\.grid: none of its settings of \['dual'\] can be fitted"):
        baselines.check_config(l1)


def test_a_rejected_grid_value_on_the_command_line_is_one_error_line(tiny_data, tmp_path):
    result = subprocess.run(
        [
            *(sys.executable, str(ROOT / "main.py"), "--config=configs/linear_svm_search.py", f"--workdir={tmp_path}"),
            *(f"--config.data.dir={tiny_data}", "--config.data.validation_size=64", "--config.search.grid.C=1.0,-1.0"),
            f"--log_dir={tmp_path / 'logs'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    line, details = last_line(result.stderr).split(" (details: ")  # scikit-learn's error, whole, in the log file
    assert line == (
        "error: config.search.grid.C: the value -1.0 is rejected (config.model.C=-1.0 must be positive); change or "
        "drop it."
    )
    log = pathlib.Path(details.removesuffix(")"))
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()
    assert "Traceback" not in result.stderr and "Fitting" not in result.stderr


def test_evaluate_refuses_another_model_or_split_and_keeps_the_search_record(tiny_data, tmp_path):
    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 5})
    run.run(config, tmp_path)
    results = metrics.load_results(tmp_path)
    results["search"] = {"method": "grid", "best_params": {"n_estimators": 5}}  # as a search run records it
    metrics.save_results(tmp_path, results)
    fit = json.loads((tmp_path / baselines.FIT_FILE).read_text())
    (tmp_path / baselines.FIT_FILE).write_text(json.dumps({**fit, "search": results["search"]}))
    config.mode = "evaluate"
    assert run.run(config, tmp_path)["search"] == results["search"]
    for field, value, says in (
        ("seed", 1, r"another model or data \(seed: trained with 0, asked for 1\)"),
        ("data.validation_size", 32, r"data.validation_size: trained with 64, asked for 32"),
    ):
        other = tiny("random_forest", tiny_data, **{"model.n_estimators": 5, "mode": "evaluate", field: value})
        with pytest.raises(ConfigError, match=says):
            run.run(other, tmp_path)
    svm = tiny("linear_svm", tiny_data, mode="predict")
    with pytest.raises(ConfigError, match=r"holds a baseline \(random_forest\) run, not a baseline \(linear_svm\) one"):
        run.run(svm, tmp_path)


def test_a_damaged_or_foreign_model_file_is_named(tiny_data, tmp_path):
    config = tiny("random_forest", tiny_data, **{"model.n_estimators": 5})
    run.run(config, tmp_path)
    config.mode = "evaluate"
    path = tmp_path / baselines.MODEL_FILE
    path.write_bytes(b"\xfd" * 64)
    with pytest.raises(ConfigError, match=r"model.joblib cannot be loaded .*delete it and train again"):
        run.run(config, tmp_path)
    joblib.dump({"not": "a model"}, path)
    with pytest.raises(ConfigError, match=r"model.joblib holds a dict, not a model of this project"):
        run.run(config, tmp_path)


def test_a_new_workdir_a_signal_stopped_before_anything_was_computed_stays_for_the_rerun(
    tiny_data, tmp_path, monkeypatch
):
    """A start refused for a bad setting removes the folder it made; one stopped by a signal leaves it as it is, as its
    last line says: rerun the same command there. Staged in a cheap baseline run: the `Interrupted` that a CNN's loop
    raises (a baseline's own signals end the process at once: `preemption.at_once`), here while the data are read."""

    def stopped(*args, **kwargs):
        raise Interrupted(signal.SIGTERM, 0, tmp_path / "new", saved=False)

    monkeypatch.setattr(data, "load", stopped)
    with pytest.raises(Interrupted):
        run.run(tiny("random_forest", tiny_data), tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [files.LOCK_FILE, config_lib.CONFIG_FILE]


def test_a_new_workdir_whose_run_failed_after_writing_into_a_subfolder_is_kept(tiny_data, tmp_path, monkeypatch):
    """Only a folder holding nothing but its lock, config.json and empty folders is removed when its start fails."""

    def failed(*args, **kwargs):  # staged: a file saved in a subfolder (as a CNN's checkpoint) before a failure
        (tmp_path / "new" / "checkpoints" / "4").mkdir(parents=True)
        (tmp_path / "new" / "checkpoints" / "4" / "state").write_text("saved")
        raise RuntimeError("a failure after the first save")

    monkeypatch.setattr(data, "load", failed)
    with pytest.raises(RuntimeError, match="after the first save"):
        run.run(tiny("random_forest", tiny_data), tmp_path / "new")
    assert (tmp_path / "new" / "checkpoints" / "4" / "state").read_text() == "saved"


@pytest.mark.parametrize(
    "ignored, sent, ends_by",
    [
        (False, ["SIGTERM"], "SIGTERM"),
        (False, ["SIGHUP"], "SIGHUP"),
        (False, ["SIGINT"], "SIGINT"),
        (True, ["SIGHUP", "SIGINT", "SIGTERM"], "SIGTERM"),
    ],
)
def test_a_signal_during_a_fit_ends_the_baseline_at_once_saying_what_to_rerun(
    tiny_data, tmp_path, ignored, sent, ends_by
):
    """A fit is minutes inside liblinear, where no Python handler runs: SIGTERM (a scheduler's), SIGHUP (a closed
    terminal) or Ctrl-C (a second later) still ends it, with the line and command a CNN run gives, exit 128 + the
    signal, the workdir as a kill leaves it (config.json, no model); SIGHUP and SIGINT ignored where the run started
    (nohup, a script's `&`) stay ignored. The fit here never ends by itself (a zero tolerance, a billion passes):
    only the signal ends the process."""
    workdir, out, err = tmp_path / "run", tmp_path / "stdout", tmp_path / "stderr"
    args = helpers.main_args(
        "linear_svm",
        workdir,
        {
            "data.dir": tiny_data,
            "data.validation_size": 64,
            "model.dual": "true",
            "model.tol": 1e-30,
            "model.max_iter": 10**9,
            "model.C": 1000.0,
            "model.verbose": 1,  # a dot on stdout every few passes: the fit under way, in liblinear
        },
    )
    command = [sys.executable, str(ROOT / "main.py"), *args]
    chosen = signal.SIG_IGN if ignored else signal.SIG_DFL  # inherited: ignored, or the default (Python's for SIGINT)
    before = {s: signal.signal(s, chosen) for s in (signal.SIGHUP, signal.SIGINT)}
    with open(out, "w") as stdout, open(err, "w") as stderr:
        try:
            proc = subprocess.Popen(command, cwd=ROOT, env=helpers.subprocess_env(), stdout=stdout, stderr=stderr)
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)
        try:
            helpers.wait_for(lambda: "." in out.read_text(), proc, timeout=120)  # liblinear's own, flushed
            for name in sent:  # SIGTERM last: were another taken, it would end the run
                proc.send_signal(signal.Signals[name])
            assert proc.wait(timeout=60) == 128 + signal.Signals[ends_by]
        finally:
            proc.kill()
    line, rerun = err.read_text().strip().splitlines()[-2:]
    assert line == (
        f"interrupted ({ends_by}, before linear_svm in {workdir} had finished; a baseline keeps no checkpoint). Go on "
        "with the same command:"
    )
    assert rerun == "  " + shlex.join(command)
    assert sorted(p.name for p in workdir.iterdir()) == [".lock", "config.json"]
