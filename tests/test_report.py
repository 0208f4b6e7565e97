"""The report package and the compare kind: the quick comparison end to end, and the report from any workdirs."""

import base64
import importlib
import json
import logging
import pathlib
import re
import shutil
import sys

import helpers
import joblib
import ml_collections
import numpy as np
import pytest
from helpers import NARROW_RECIPE, load_config, quick_compare_config, run_main, snapshot

from fmnist_jax import baselines, compare, config_lib, data, machine, metrics, parallel, report, run, stats
from fmnist_jax.errors import ConfigError, UserError
from fmnist_jax.report import plots as report_plots
from fmnist_jax.report import runs as runs_module
from fmnist_jax.report import sentences, tables
from fmnist_jax.report.__main__ import main as report_main


@pytest.fixture(scope="module")
def comparison(tiny_data, tmp_path_factory):
    """The quick comparison on the tiny data set (quick overrides shrunk to fit it)."""
    from fmnist_jax import timing

    config = quick_compare_config(tiny_data, seeds=(0, 1))
    workdir = tmp_path_factory.mktemp("compare")
    timing._START_UP_TAKEN.clear()  # as in a fresh process: the process's start-up not yet taken by a run
    return config, workdir, run.run(config, workdir)


def correct(workdir):
    predictions = metrics.load_predictions(workdir)
    return predictions["preds"] == predictions["labels"]


def table_rows(markdown, header_start):
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_quick_comparison_writes_every_section_with_the_members_numbers(comparison):
    _, workdir, results = comparison
    assert sorted(results) == ["cnn", "linear_svm", "random_forest"]
    for name in results:
        assert sorted(results[name]) == [0, 1]
        for seed in (0, 1):
            assert results[name][seed] == metrics.load_results(workdir / name / f"seed_{seed}")
            assert results[name][seed]["seed"] == seed
    assert results["cnn"][0]["num_params"] == 438_026
    assert results["cnn"][0]["params_sha256"] != results["cnn"][1]["params_sha256"]
    # The process's start-up is the comparison's, not its first member's.
    assert all(set(r["seconds"]["phases"]) >= {"data", "training"} for r in results["cnn"].values())
    assert not any("before_run" in r["seconds"]["phases"] for r in results["cnn"].values())
    md = (workdir / "report.md").read_text()
    assert all(r[seed]["dataset_released"] is False for r in results.values() for seed in (0, 1))  # generated data
    assert "Every run read data files other than Fashion-MNIST's released ones" in md
    for section in (
        "## Summary",
        "## Seeds",
        "## How sure are these differences?",
        "## Per class: precision, recall, F1",
        "## Most confused classes",
        "## Confusion matrices",
        "## Training curves",
        "## Misclassified test images",
        "## The classes",
    ):
        assert section in md
    summary = table_rows(md, "| model | test accuracy")
    assert [row[0] for row in summary] == ["CNN (Flax)", "Random forest", "Linear SVM"]
    # Quick runs are said to be: each run's line names what differs from its config file.
    assert "seed 0 — not `configs/cnn.py` as it is: data.num_train=256, data.validation_size=64, num_epochs=3" in md
    assert "not `configs/random_forest.py` as it is: data.num_train=256, data.validation_size=64, model.n_estim" in md
    for row, name, study in zip(
        summary, ("cnn", "random_forest", "linear_svm"), ("0.8997", "0.8790", "0.7600"), strict=True
    ):
        accuracies = [results[name][seed]["test_accuracy"] for seed in (0, 1)]
        mean, std = np.mean(accuracies), np.std(accuracies, ddof=1)
        assert row[1] == f"{mean:.4f} ± {std:.4f}" and row[2] == "per seed below" and row[3] == study
        assert row[4] == f"{np.mean([results[name][s]['validation_accuracy'] for s in (0, 1)]):.4f}"
        params = [results[name][s]["num_params"] for s in (0, 1)]
        assert row[5] == f"{params[0]:,}" + ("" if params[0] == params[1] else " (seed 0)")
        assert row[9] == "2"
    seeds = table_rows(md, "| model | seed |")
    assert [(r[0], r[1]) for r in seeds] == [
        (t, s) for t in ("CNN (Flax)", "Random forest", "Linear SVM") for s in "01"
    ]
    for r, (name, seed) in zip(
        seeds, [(n, s) for n in ("cnn", "random_forest", "linear_svm") for s in (0, 1)], strict=True
    ):
        low, high = stats.accuracy_interval(correct(workdir / name / f"seed_{seed}"))
        assert r[2] == f"{results[name][seed]['test_accuracy']:.4f}" and r[3] == f"{low:.4f}–{high:.4f}"
    per_class = table_rows(md, "| class |")
    assert len(per_class) == 10 and per_class[6][0] == "Shirt"
    cells = iter(c.strip("*") for c in per_class[6][1:])  # P, R and F1, each of the three models
    for metric in ("precision", "recall", "f1"):
        for name in ("cnn", "random_forest", "linear_svm"):
            values = [results[name][s]["per_class"]["Shirt"][metric] for s in (0, 1)]
            assert next(cells) == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}", (metric, name)
    assert next(cells, None) is None
    assert "All models are scored on the same 100 test images" in md
    images = re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", md)
    assert {
        "plots/confusion_cnn.png",
        "plots/curves_cnn.png",
        "plots/errors_cnn.png",
        "plots/samples_per_class.png",
        "plots/f1_per_class.png",
        "plots/confusion_random_forest.png",
        "plots/confusion_linear_svm.png",
    } <= set(images)
    for image in images:
        assert (workdir / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained(comparison):
    _, workdir, _ = comparison
    page = (workdir / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(re.findall(r"!\[", (workdir / "report.md").read_text()))
    assert all(base64.b64decode(e)[:4] == b"\x89PNG" for e in embedded)
    assert 'src="plots/' not in page and "<table>" in page and "Shirt" in page


def test_rerun_reuses_finished_members(comparison, caplog):
    """And ends with each member's scores on screen, as the report's first table has them."""
    config, workdir, results = comparison
    paths = sorted(workdir.glob("*/seed_*/results.json"))
    stamps = [p.stat().st_mtime_ns for p in paths]
    with caplog.at_level(logging.INFO):
        assert len(paths) == 6 and run.run(config, workdir) == results
    assert stamps == [p.stat().st_mtime_ns for p in paths]
    for name, by_seed in results.items():
        accuracy = stats.seed_summary([by_seed[s]["test_accuracy"] for s in (0, 1)])
        expected = f"{name}: test accuracy {accuracy['mean']:.4f} ± {accuracy['std']:.4f} (seeds 0 and 1)"
        assert expected in [r.getMessage() for r in caplog.records]


def test_named_member_workdir_is_reported_not_retrained(comparison, tmp_path, caplog):
    """Named finished runs are reported as they are; one trained with settings other than its member's (here the
    CNN's learning rate) with a warning that names them, one without its config.json with a warning too."""
    config, workdir, results = comparison
    for name in results:
        config.members[name].workdir = str(workdir / name / "seed_{seed}")
    for seed in (0, 1):  # the SVM's runs copied without their config.json: settings unknown
        shutil.copytree(workdir / "linear_svm" / f"seed_{seed}", tmp_path / "svm" / f"seed_{seed}")
        (tmp_path / "svm" / f"seed_{seed}" / config_lib.CONFIG_FILE).unlink()
    config.members.linear_svm.workdir = str(tmp_path / "svm" / "seed_{seed}")
    rate = config.members.cnn.learning_rate
    config.members.cnn.learning_rate = rate * 2
    try:
        with caplog.at_level(logging.WARNING):
            out = run.run(config, tmp_path)
    finally:
        for name in results:
            config.members[name].workdir = None
        config.members.cnn.learning_rate = rate
    assert out == results and sorted(tmp_path.glob("*/seed_*")) == [
        tmp_path / "svm" / "seed_0",
        tmp_path / "svm" / "seed_1",
    ]
    warned = [r.getMessage() for r in caplog.records if "reported as it is" in r.getMessage()]
    assert [w.split(":")[0] for w in warned] == [
        "cnn, seed 0",
        "cnn, seed 1",
        "linear_svm, seed 0",
        "linear_svm, seed 1",
    ]
    assert all(f"other settings (learning_rate: {rate!r} (member: {rate * 2!r})); reported" in w for w in warned[:2])
    assert all("has no config.json: its settings unknown; reported as it is." in w for w in warned[2:])
    # The report of the named runs shows what the comparison that trained them showed.
    summary = table_rows((tmp_path / "report.md").read_text(), "| model | test accuracy")
    assert summary == table_rows((workdir / "report.md").read_text(), "| model | test accuracy")
    assert [row[0] for row in summary] == ["CNN (Flax)", "Random forest", "Linear SVM"]


def test_a_named_member_folder_of_another_model_or_seed_is_refused(comparison, tmp_path):
    """A member named at another model's runs (the forest's folder given the CNN's), or at a run of another seed, is
    refused before anything trains: reported as it is, its scores would stand under the member's name and seed."""
    config, workdir, _ = comparison
    config.members.random_forest.workdir = str(workdir / "cnn" / "seed_{seed}")
    seeds = config.seeds
    try:
        with pytest.raises(
            ConfigError,
            match=r"config\.members\.random_forest\.workdir: .*cnn/seed_0 holds a run of "
            r"the model 'seed_cnn', not random_forest's 'random_forest'",
        ):
            run.run(config, tmp_path / "compare")
        config.members.random_forest.workdir, config.seeds = str(workdir / "random_forest" / "seed_1"), (0,)
        with pytest.raises(
            ConfigError, match=r"random_forest/seed_1 holds a run of seed 1, not 0; .*--config\.seeds=1"
        ):
            run.run(config, tmp_path / "compare")
    finally:
        config.members.random_forest.workdir, config.seeds = None, seeds
    assert not (tmp_path / "compare").exists()  # the folder it made, removed


def test_an_interrupted_run_in_a_named_folder_is_finished_there(comparison, tmp_path, caplog):
    """A named folder may hold an unfinished run (docs/comparison.md): it goes on there, as its own command would (a
    fitted forest not yet scored is scored, not fitted again), and its scores are the comparison's."""
    config, workdir, results = comparison
    for seed in (0, 1):
        shutil.copytree(workdir / "random_forest" / f"seed_{seed}", tmp_path / "rf" / f"seed_{seed}")
    (tmp_path / "rf" / "seed_1" / metrics.RESULTS_FILE).unlink()
    for name in ("cnn", "linear_svm"):
        config.members[name].workdir = str(workdir / name / "seed_{seed}")
    config.members.random_forest.workdir = str(tmp_path / "rf" / "seed_{seed}")
    try:
        with caplog.at_level(logging.INFO):
            out = run.run(config, tmp_path / "compare")
    finally:
        for name in ("cnn", "random_forest", "linear_svm"):
            config.members[name].workdir = None
    assert f"random_forest, seed 1: running in {tmp_path / 'rf' / 'seed_1'}" in caplog.text
    assert f"{tmp_path / 'rf' / 'seed_1'} holds a fitted model without its scores: scoring it" in caplog.text
    assert out["random_forest"][1]["test_accuracy"] == results["random_forest"][1]["test_accuracy"]
    assert (tmp_path / "rf" / "seed_1" / metrics.RESULTS_FILE).exists()


def test_a_named_member_run_on_other_data_is_refused_for_other_test_files_and_warned_of_for_other_training_ones(
    comparison, tmp_path, caplog
):
    """A named run's recorded data against the files the members trained here read (read once, before anything
    trains): scored on other test images it could not be paired with them (an error; the report refused it after
    every member had trained); trained on other files it is reported, with a warning naming them. Runs recorded
    before the checksums were of each file's content (a gzip file's bytes as stored) count as the same data."""
    config, workdir, results = comparison
    config.members.cnn.workdir = str(workdir / "cnn" / "seed_{seed}")
    for seed in (0, 1):
        shutil.copytree(workdir / "random_forest" / f"seed_{seed}", tmp_path / "rf" / f"seed_{seed}")
    config.members.random_forest.workdir = str(tmp_path / "rf" / "seed_{seed}")  # the SVM trains here

    def recorded(change):
        for seed in (0, 1):
            saved = metrics.load_results(tmp_path / "rf" / f"seed_{seed}")
            saved["dataset_checksums"] = change(saved["dataset_checksums"])
            metrics.save_results(tmp_path / "rf" / f"seed_{seed}", saved)

    try:
        recorded(lambda sums: {f"{k}.gz": "0" * 64 for k in sums})  # a record before content's checksums
        with caplog.at_level(logging.WARNING):
            run.run(config, tmp_path / "older")
        assert "trained on other files" not in caplog.text
        recorded(
            lambda sums: (
                {
                    k.removesuffix(".gz"): results["random_forest"][0]["dataset_checksums"][k.removesuffix(".gz")]
                    for k in sums
                }
                | {"train-labels-idx1-ubyte": "0" * 64}
            )
        )
        with caplog.at_level(logging.WARNING):
            run.run(config, tmp_path / "compare")
        warned = "/seed_0 was trained on other files than the members trained here read (train-labels-idx1-ubyte differ"
        assert warned in caplog.text
        config.members.linear_svm.workdir = str(workdir / "linear_svm" / "seed_{seed}")  # nothing trains: records
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            run.run(config, tmp_path / "named")
        assert "rf/seed_0 was trained on other files than cnn's run in " in caplog.text
        for seed in (0, 1):  # the CNN's runs as recorded before their files' content was: held against the forest's
            shutil.copytree(workdir / "cnn" / f"seed_{seed}", tmp_path / "cnn" / f"seed_{seed}")
            saved = metrics.load_results(tmp_path / "cnn" / f"seed_{seed}")
            metrics.save_results(tmp_path / "cnn" / f"seed_{seed}", {**saved, "dataset_checksums": {"a.gz": "0"}})
        config.members.cnn.workdir = str(tmp_path / "cnn" / "seed_{seed}")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            run.run(config, tmp_path / "named_again")
        assert "linear_svm/seed_0 was trained on other files than random_forest's run in " in caplog.text
        recorded(lambda sums: {**sums, "t10k-images-idx3-ubyte": "0" * 64})
        with pytest.raises(ConfigError, match=r"linear_svm/seed_0 was scored on other test images than random_forest"):
            run.run(config, tmp_path / "named_other_test")  # nothing trains: refused all the same, before the report
        config.members.linear_svm.workdir = None
        with pytest.raises(ConfigError, match=r"rf/seed_0 was scored on other test images than the members trained "):
            run.run(config, tmp_path / "again")
    finally:
        config.members.cnn.workdir = config.members.random_forest.workdir = config.members.linear_svm.workdir = None
    assert not (tmp_path / "again").exists() and not (tmp_path / "named_other_test").exists()  # the SVM never started


def test_members_reading_other_test_images_stop_the_comparison_before_anything_trains(comparison, tmp_path):
    config, _, _ = comparison
    other = helpers.write_idx_dataset(tmp_path / "other", n_train=320, n_test=100, seed=7)
    config.members.linear_svm.data.dir = str(other)
    try:
        with pytest.raises(
            ConfigError,
            match=r"^config\.members\.cnn and config\.members\.linear_svm read other test images \(t10k-images-idx3-ub",
        ):
            run.run(config, tmp_path / "compare")
    finally:
        config.members.linear_svm.data.dir = config.members.cnn.data.dir
    assert not (tmp_path / "compare").exists()


def test_runs_of_one_config_on_other_data_are_other_models_and_pairs_need_the_same_test_files(comparison, tmp_path):
    """Runs whose results record other files are never seeds of one model (their mean would mix two experiments):
    each is a model of its own, titled with its data, in the same order whatever order the runs are named in; one
    whose record predates content's checksums joins the others. Two models whose runs' test files differ by content
    are refused, even where the labels agree (other images in the same classes) or no seed has both."""
    _, workdir, _ = comparison
    for seed in (0, 1):
        shutil.copytree(workdir / "linear_svm" / f"seed_{seed}", tmp_path / f"svm_{seed}")
    other = metrics.load_results(tmp_path / "svm_1")
    sums = other["dataset_checksums"]
    metrics.save_results(tmp_path / "svm_1", {**other, "dataset_checksums": {**sums, "train-labels-idx1-ubyte": "0"}})
    runs = [tmp_path / "svm_0", tmp_path / "svm_1"]
    md = report.build(runs, tmp_path / "out")["markdown"].read_text()
    n = sum(c["support"] for c in other["per_class"].values())
    assert f"All models are scored on {n:,} test images" in md  # not "the same": the data's checksums differ
    titles = [row[0] for row in table_rows(md, "| model | test accuracy")]
    assert len(titles) == 2 and all(t.startswith("Linear SVM (data: files ") for t in titles)
    assert titles[0] != titles[1]
    again = report.build(runs[::-1], tmp_path / "reversed")["markdown"].read_text()
    assert [row[0] for row in table_rows(again, "| model | test accuracy")] == titles
    older = {k: v for k, v in other.items() if k != "dataset_released"}
    metrics.save_results(tmp_path / "svm_1", {**older, "dataset_checksums": {f"{k}.gz": "0" for k in sums}})
    md = report.build(runs, tmp_path / "older")["markdown"].read_text()
    assert [row[0] for row in table_rows(md, "| model | test accuracy")] == ["Linear SVM"]  # seeds 0 and 1
    shutil.copytree(workdir / "random_forest" / "seed_1", tmp_path / "rf")
    forest = metrics.load_results(tmp_path / "rf")
    metrics.save_results(tmp_path / "rf", {**forest, "dataset_checksums": {**sums, "t10k-images-idx3-ubyte": "0"}})
    with pytest.raises(UserError, match=r"svm_0 and .*rf cannot be paired: their test images differ \(t10k-images"):
        report.build([tmp_path / "svm_0", tmp_path / "rf"], tmp_path / "pair")  # seeds 0 and 1: no paired test


def test_runs_whose_data_are_unrecorded_join_only_a_share_of_their_own_source():
    """A run without checksums, or with an older record's gzip sums only, counts as the others' where those read one
    data set; the gzip record read IDX files, so never TFDS's arrays."""

    def member(sums):
        return runs_module.Member("svm", pathlib.Path("svm"), {"dataset_checksums": sums}, [], {})

    gzip_record, tfds = {f"{k}.gz": "0" * 64 for k in data.RELEASED_SHA256}, {"tfds:fashion_mnist": "a" * 64}
    assert [note for _, note in runs_module._by_data([member(data.RELEASED_SHA256), member(gzip_record)])] == [""]
    assert [note for _, note in runs_module._by_data([member(tfds), member(None)])] == [""]
    notes = [note for _, note in runs_module._by_data([member(tfds), member(gzip_record)])]
    assert notes[0].startswith("data: TFDS's arrays ") and notes[1] == "data: unrecorded"
    other = {**data.RELEASED_SHA256, "t10k-images-idx3-ubyte": "1" * 64}
    notes = [note for _, note in runs_module._by_data([member(other), member(data.RELEASED_SHA256), member(None)])]
    assert notes[0] == "data: the released files" and notes[1].startswith("data: files ")  # first, whatever the order
    assert notes[2] == "data: unrecorded"  # two data sets recorded: an unrecorded run joins neither
    dotted = {name.replace("-idx", ".idx"): digest for name, digest in other.items()}  # a record before 2026-12-06
    assert [note for _, note in runs_module._by_data([member(other), member(dotted)])] == [""]  # the same files


def test_models_of_one_label_get_distinct_labels_even_where_a_suffixed_one_is_taken(tmp_path):
    """Labels name the figures' files and report.json's keys: "a", "a" and "a_2" must not give two "a_2", nor
    rename the model whose own label "a_2" is; labels differing in case alone name one file on macOS and Windows."""
    models = [runs_module.Model(label, "A", []) for label in ("a", "a", "a_2", "A")]
    assert [m.label for m in runs_module._set_apart(models)] == ["a", "a_3", "a_2", "A_4"]
    models = [runs_module.Model(label, "Linear SVM", []) for label in ("a", "b")]  # two rows of one title
    assert [m.title for m in runs_module._set_apart(models)] == ["Linear SVM (a)", "Linear SVM (b)"]


def test_confused_pairs_in_words():
    cm = np.zeros((10, 10), int)
    np.fill_diagonal(cm, 90)
    cm[6, 0], cm[6, 6] = 12, 88  # Shirt -> T-shirt/top: 12 of 100
    cm[4, 2] = 10  # Coat -> Pullover: 10 of 100
    pairs = tables.confused_pairs(cm, top=2)
    assert pairs[0] == ("Shirt", "T-shirt/top", pytest.approx(0.12))
    assert pairs[1] == ("Coat", "Pullover", pytest.approx(0.10))
    assert len(tables.confused_pairs(cm, top=5)) == 2  # the other off-diagonal cells are empty: never listed
    perfect = np.diag(np.full(10, 100))
    assert tables.confused_pairs(perfect) == []
    assert sentences.confused_in_words(tables.confused_pairs(perfect)) == ["no test image misclassified"]


def test_a_p_value_in_the_table_is_plain_down_to_1e_4_and_in_scientific_form_below():
    """Up to three significant digits as a decimal from 1e-4 up, where the decimal still reads at a glance."""
    assert [sentences.p_cell(p) for p in (0.0344, 5e-4, 1e-4, 2e-5, 0.0)] == [
        "0.0344",
        "0.0005",
        "0.0001",
        "2.0e-05",
        "< 1e-300",
    ]


def test_the_best_per_class_figure_is_bold_among_several_models_and_seed_rows_list_models_of_several_seeds(
    tmp_path,
):
    def model(label, score, seeds=(0,)):
        per_class = {c: {"precision": score, "recall": score, "f1": score} for c in data.CLASS_NAMES}
        results = {"test_accuracy": score, "validation_accuracy": None, "train_seconds": 90.0, "per_class": per_class}
        runs = [report.runs.Member(label, tmp_path, {**results, "seed": s}, [], {}) for s in seeds]
        return report.runs.Model(label, label.upper(), runs)

    assert tables.per_class_rows([model("a", 0.9)])[0] == ["T-shirt/top", "0.900", "0.900", "0.900"]  # alone: no bold
    rows = tables.per_class_rows([model("a", 0.9), model("b", 0.8)])
    assert rows[0] == ["T-shirt/top", "**0.900**", "0.800", "**0.900**", "0.800", "**0.900**", "0.800"]
    rows = tables.per_class_rows([model("a", 0.88835), model("b", 0.88825)])  # both read 0.888: both bold
    assert rows[0] == ["T-shirt/top", *["**0.888**"] * 6]
    # The per-seed table lists the models of several seeds only (one seed's figures are the summary's).
    assert tables.seed_rows([model("a", 0.9), model("b", 0.8, seeds=(0, 1))]) == [
        ["B", "0", "0.8000", "n/a", "n/a", "90.0 s"],
        ["B", "1", "0.8000", "n/a", "n/a", "90.0 s"],
    ]


def test_the_studys_figure_stands_beside_the_studys_own_configs_only(tmp_path):
    def model(config_name, name):
        results = {"model": name, "config_name": config_name, "seed": 0}
        return report.runs.Model(config_name, config_name, [report.runs.Member(config_name, tmp_path, results, [], {})])

    assert runs_module.published_accuracy(model("random_forest", "random_forest")) == 0.879
    assert runs_module.published_accuracy(model("cnn", "seed_cnn")) == 0.8997
    # A searched forest is the study's estimator with other settings: not the model the study scored.
    assert runs_module.published_accuracy(model("random_forest_search", "random_forest")) is None


def test_an_earlier_checkpoint_scored_apart_is_never_a_seed_of_the_finished_runs(comparison, tmp_path):
    _, workdir, _ = comparison
    shutil.copytree(workdir / "cnn" / "seed_0", tmp_path / "run")
    scored = tmp_path / "run" / "evaluate_step_4"  # as --config.mode=evaluate --config.checkpoint.step=4 leaves it
    scored.mkdir()
    results = json.loads((tmp_path / "run" / metrics.RESULTS_FILE).read_text())
    (scored / metrics.RESULTS_FILE).write_text(json.dumps({**results, "checkpoint_step": 4}))
    models = runs_module.load_models([workdir / "cnn" / "seed_1", scored])
    assert [(m.label, m.seeds) for m in models] == [("cnn", [1]), ("cnn_step4", [0])]
    assert models[1].title == "CNN (Flax) (checkpoint at step 4)"


def test_report_command_line(comparison, tmp_path, capsys):
    _, workdir, _ = comparison
    runs = [str(workdir / name / "seed_0") for name in ("cnn", "linear_svm")]
    assert report_main([*runs, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    written = ", ".join(str(tmp_path / f"report.{ext}") for ext in ("md", "html"))
    assert (out, err) == (f"wrote {written}, {tmp_path / 'report.json'} and {tmp_path / 'plots'}/\n", "")
    md = (tmp_path / "report.md").read_text()
    assert [r[0] for r in table_rows(md, "| model |")] == ["CNN (Flax)", "Linear SVM"]
    assert "## Seeds" not in md and (tmp_path / "report.json").exists()
    assert report_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {tmp_path / 'nothing'} does not exist") and err.count("\n") == 1


def test_a_report_of_no_workdirs_is_refused_and_makes_nothing(tmp_path):
    with pytest.raises(UserError, match=r"^the report needs at least one finished workdir$"):
        report.build([], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_f1_figure_is_drawn_for_two_models_and_not_for_one_and_report_json_names_the_out_folder(
    comparison, tmp_path
):
    _, workdir, _ = comparison
    runs = [workdir / name / "seed_0" for name in ("random_forest", "linear_svm")]
    two = json.loads(report.build(runs, tmp_path / "two")["json"].read_text())
    one = json.loads(report.build(runs[:1], tmp_path / "one")["json"].read_text())
    assert "f1_per_class.png" in two["figures"] and (tmp_path / "two" / "plots" / "f1_per_class.png").is_file()
    assert "f1_per_class.png" not in one["figures"]
    n = sum(c["support"] for c in metrics.load_results(runs[0])["per_class"].values())
    assert f"All models are scored on the same {n:,} test images" in (tmp_path / "two" / "report.md").read_text()
    assert (two["out"], one["out"]) == (str(tmp_path / "two"), str(tmp_path / "one"))


def synthetic_member(tmp_path, predictions=None, per_class_f1=None, seed=0):
    """A run as the report sees it, with only what a figure reads."""
    results = {"seed": seed}
    if per_class_f1 is not None:
        results["per_class"] = {c: {"f1": f} for c, f in zip(data.CLASS_NAMES, per_class_f1, strict=True)}
    return runs_module.Member("m", tmp_path, results, [], predictions or {}, title="M")


def test_the_errors_figure_shows_the_first_24_misclassified_images_and_none_without_errors(tmp_path, monkeypatch):
    drawn = {}

    def grid(images, titles, ncols, suptitle, path):
        drawn.update(images=images, titles=titles, ncols=ncols, suptitle=suptitle)
        return path

    monkeypatch.setattr(report_plots, "_image_grid", grid)
    labels = np.arange(70) % 10
    errors = {  # 30 errors at odd test indices, each image and each pair of classes its own
        "error_indices": np.arange(30) * 2 + 1,
        "error_images": np.arange(30, dtype=np.uint8)[:, None, None].repeat(28, 1).repeat(28, 2),
        "labels": labels,
        "preds": (labels + 1) % 10,
    }
    assert report_plots.plot_errors(synthetic_member(tmp_path, errors), tmp_path / "e.png") == tmp_path / "e.png"
    np.testing.assert_array_equal(drawn["images"], errors["error_images"][:24])
    names = data.CLASS_NAMES
    assert drawn["titles"] == [f"true: {names[i % 10]}\npred: {names[(i + 1) % 10]}" for i in range(1, 48, 2)]
    assert drawn["ncols"] == 8
    assert drawn["suptitle"] == "M: misclassified test images (the first 24) (this model gives no probabilities)"
    drawn.clear()
    none = {**errors, "error_indices": np.arange(0), "error_images": np.zeros((0, 28, 28), np.uint8)}
    assert report_plots.plot_errors(synthetic_member(tmp_path, none), tmp_path / "none.png") is None and not drawn


def test_a_confusion_cells_percentage_has_one_decimal_only_below_one_percent():
    assert [report_plots._percent(pct) for pct in (0.0, 0.44, 0.96, 1.0, 37.6)] == ["0.0", "0.4", "1.0", "1", "38"]


def test_a_figure_is_written_and_closed(tmp_path):
    plt = report_plots._pyplot()
    before = plt.get_fignums()
    errors = {
        "error_indices": np.arange(3),
        "error_images": np.zeros((3, 28, 28), np.uint8),
        "labels": np.zeros(3, np.int64),
        "preds": np.ones(3, np.int64),
    }
    path = report_plots.plot_errors(synthetic_member(tmp_path, errors), tmp_path / "e.png")
    assert path.read_bytes().startswith(b"\x89PNG") and plt.get_fignums() == before


def test_the_f1_bars_error_is_the_sample_standard_deviation_over_seeds(tmp_path, monkeypatch):
    from matplotlib import pyplot
    from matplotlib.container import BarContainer

    drawn = []
    monkeypatch.setattr(report_plots, "_save", lambda fig, path: drawn.append(fig) or path)
    runs = [synthetic_member(tmp_path, per_class_f1=[f] * 10, seed=s) for s, f in enumerate((0.6, 0.8))]
    try:
        report_plots.plot_f1([runs_module.Model("m", "M", runs)], tmp_path / "f1.png")
        bars = next(c for c in drawn[0].axes[0].containers if isinstance(c, BarContainer))
        (low, high), *_ = [segment[:, 1] for segment in bars.errorbar.lines[2][0].get_segments()]
    finally:
        for fig in drawn:  # not saved, so never closed by the code
            pyplot.close(fig)
    assert [b.get_height() for b in bars] == pytest.approx([0.7] * 10)
    assert high - low == pytest.approx(2 * np.std([0.6, 0.8], ddof=1))  # 0.283, not 0.2 (ddof 0)


def test_compare_through_main_rejects_other_modes(tmp_path):
    result = run_main("--config=configs/compare.py", f"--workdir={tmp_path}", "--config.mode=predict")
    assert result.returncode == 2 and "a comparison only trains and reports" in result.stderr


def test_two_runs_of_one_model_get_distinct_titles_and_files(comparison, tmp_path):
    import shutil

    _, workdir, _ = comparison
    for name in ("svm_a", "svm_b"):
        shutil.copytree(workdir / "linear_svm" / "seed_0", tmp_path / name)
    paths = report.build([tmp_path / "svm_a", tmp_path / "svm_b"], tmp_path / "out")
    md = paths["markdown"].read_text()
    assert [r[0] for r in table_rows(md, "| model |")] == ["Linear SVM (svm_a)", "Linear SVM (svm_b)"]
    assert {"confusion_linear_svm_svm_a.png", "confusion_linear_svm_svm_b.png"} <= {
        p.name for p in paths["plots"].iterdir()
    }
    # The same folder names under two parents: still two models, two sets of plots, two entries in report.json.
    for parent in ("a", "b"):
        shutil.copytree(workdir / "linear_svm" / "seed_0", tmp_path / parent / "linear_svm" / "seed_0")
    paths = report.build([tmp_path / p / "linear_svm" / "seed_0" for p in "ab"], tmp_path / "out2")
    labels = list(json.loads(paths["json"].read_text())["models"])
    assert labels == ["linear_svm_linear_svm_seed_0", "linear_svm_linear_svm_seed_0_2"]
    assert {f"confusion_{label}.png" for label in labels} <= {p.name for p in paths["plots"].iterdir()}


def test_the_report_names_the_runs_that_read_other_data_than_the_released_files(comparison, tmp_path):
    """A run's `dataset_released` (False: IDX files with other content) is said in the introduction, naming the
    runs; runs of the released files (True) or of TFDS's (None) are not named; in results that predate the field,
    raw IDX files' checksums tell, gzip files' cannot."""
    import shutil

    _, workdir, _ = comparison
    older = {
        k: v for k, v in metrics.load_results(workdir / "linear_svm" / "seed_0").items() if k != "dataset_released"
    }
    other_raw = {**older["dataset_checksums"], "train-images-idx3-ubyte": "0" * 64}  # its test files: pairs hold
    for name, changes in [
        ("svm_a", {"dataset_released": True}),
        ("svm_b", {"dataset_released": False}),
        ("svm_c", {"dataset_released": None}),  # TFDS's
        ("svm_d", {"dataset_checksums": other_raw}),  # older results: raw files' checksums, of their content
        ("svm_e", {"dataset_checksums": {f"{n}.gz": "0" * 64 for n in data.RELEASED_SHA256}}),  # gzip files': unknown
    ]:
        shutil.copytree(workdir / "linear_svm" / "seed_0", tmp_path / name)
        metrics.save_results(tmp_path / name, {**older, **changes})
    runs = [tmp_path / f"svm_{x}" for x in "abcde"]
    md = report.build(runs, tmp_path / "out")["markdown"].read_text()
    assert "The runs svm_b, svm_d read data files other than Fashion-MNIST's released ones" in md
    assert "differs): their scores are not comparable" in md
    md = report.build(runs[:2], tmp_path / "out1")["markdown"].read_text()
    assert "The run svm_b read data files other than" in md and "differs): its scores are not comparable" in md
    md = report.build([tmp_path / "svm_a"], tmp_path / "out2")["markdown"].read_text()
    assert "released" not in md


def test_models_trained_on_different_numbers_of_images_are_said_to_be_so_beside_their_paired_tests(
    comparison, tmp_path
):
    """results.json records how many images a model trained on (a baseline fitted on validation too: train and
    validation); where a report's models differ in it (a recipe trained on all 60,000 beside the study's 48,000),
    the paired tests are said to weigh the data with the recipe."""
    _, workdir, _ = comparison
    for name in ("cnn", "linear_svm"):
        shutil.copytree(workdir / name / "seed_0", tmp_path / name)
    trained, fitted = (metrics.load_results(tmp_path / name) for name in ("cnn", "linear_svm"))
    history = metrics.read_history(tmp_path / "cnn")  # the images of an epoch: its steps' batches, a partial one too
    assert trained["num_train_images"] == fitted["num_train_images"] > history[0]["step"] * 64 - 64
    runs = [tmp_path / "cnn", tmp_path / "linear_svm"]
    assert "different numbers of images" not in report.build(runs, tmp_path / "same")["markdown"].read_text()
    metrics.save_results(tmp_path / "cnn", {**trained, "num_train_images": 60_000})
    md = report.build(runs, tmp_path / "other")["markdown"].read_text()
    listed = f"CNN (Flax): 60,000; Linear SVM: {fitted['num_train_images']:,}"
    assert f"The models trained on different numbers of images ({listed}): each pair's test compares" in md


def test_the_report_names_the_machine_and_lists_the_runs_of_each_where_there_are_several(comparison, tmp_path):
    """Every run's results.json names the machines it trained on and the one that scored it; the report names their
    hardware (without device counts and versions): the comparison's one, or, for runs of two, the runs under each,
    since their times do not compare; a run that moved, under its machines in turn (not for another device count on
    the same hardware); one scored again elsewhere, with that machine."""
    _, workdir, results = comparison
    cnn = results["cnn"][0]["machine"]
    assert cnn == results["cnn"][1]["machine"] == parallel.run_machine(parallel.make_mesh())
    assert results["cnn"][0]["trained_on"] == [{"machine": cnn, "from_step": 0}]
    forest = results["random_forest"][0]["machine"]
    assert forest == baselines.run_machine() and results["random_forest"][0]["trained_on"][0]["machine"] == forest
    here = f"cpu: {machine.cpu_kind()}"  # the hardware both name, without device counts and versions
    assert cnn.startswith(here + ";") and forest.startswith(here + ";")
    intro = " ".join((workdir / "report.md").read_text().split())
    assert f"The runs computed on `{here}`." in intro and "machines" not in intro
    gpu = "gpu: NVIDIA H200"
    on_gpu = f"{gpu}; 1 device(s) in 1 process(es); jax 0.11.2"
    older = {k: v for k, v in results["cnn"][0].items() if k != "trained_on"}  # results before the lineage
    eight = cnn.replace("1 device(s)", "8 device(s)")  # the same hardware: not a move between machines
    changes = [
        older,
        {"machine": on_gpu, "trained_on": [{"machine": on_gpu, "from_step": 0}]},
        {
            "machine": on_gpu,
            "trained_on": [{"machine": m, "from_step": n} for m, n in ((cnn, 0), (eight, 2), (on_gpu, 6))],
        },
        {"machine": on_gpu},  # trained here, scored again on the GPU
    ]
    for i, change in enumerate(changes):
        shutil.copytree(workdir / "cnn" / f"seed_{i % 2}", tmp_path / f"cnn_{i}")
        metrics.save_results(tmp_path / f"cnn_{i}", {**results["cnn"][i % 2], **change} if i else change)
    md = report.build([tmp_path / f"cnn_{i}" for i in range(4)], tmp_path / "out")["markdown"].read_text()
    assert (
        f"Times compare within one machine only: the CNN runs: `{here}` (cnn_0); `{gpu}` (cnn_1); `{here}`, from step "
        f"6 on `{gpu}` (cnn_2); `{here}`, scored on `{gpu}` (cnn_3)."
    ) in " ".join(md.split())
    # A GPU's host fits the baselines on its CPU: each group named with its own; a run without a record apart.
    for name in ("random_forest", "linear_svm"):
        shutil.copytree(workdir / name / "seed_0", tmp_path / name)
    svm = {k: v for k, v in results["linear_svm"][0].items() if k not in ("machine", "trained_on")}
    metrics.save_results(tmp_path / "linear_svm", svm)  # results older than the record
    md = report.build([tmp_path / n for n in ("cnn_1", "random_forest", "linear_svm")], tmp_path / "out2")["markdown"]
    assert (
        f"No machine is recorded for linear_svm. Times compare within one machine only: the CNN run on `{gpu}`, the "
        f"baseline on `{here}`."
    ) in " ".join(md.read_text().split())


def test_the_machine_sentence_counts_its_runs_and_names_what_is_unrecorded(tmp_path):
    """One run is "the run"; a baseline scored again whose fit's machine went unrecorded (`trained_on` null) is
    named by the machine that scored it and said to lack its fit's; results without any record are named; the
    baselines' model names are those of baselines.MODELS."""
    cpu, gpu = "cpu: EPYC / AVX512 / 2 threads", "gpu: NVIDIA H200"
    build = importlib.import_module("fmnist_jax.report.build")  # the module, which report.build (a function) hides

    def member(label, model, **fields):
        return report.runs.Member(label, tmp_path / label, {"model": model, **fields}, [], {})

    cnn = member("cnn", "seed_cnn", machine=f"{cpu}; 1 device(s)", trained_on=[{"machine": cpu, "from_step": 0}])
    assert build._machines([cnn]) == f" The run computed on `{cpu}`."
    forest = member("rf", "random_forest", machine=f"{cpu}; scikit-learn 1.6", trained_on=None)
    old = member("svm", "linear_svm")
    assert build._machines([cnn, forest, old]) == (
        f" No machine is recorded for rf's fit, svm. The other runs computed on `{cpu}`."
    )
    moved = member(
        "cnn2", "seed_cnn", machine=gpu, trained_on=[{"machine": cpu, "from_step": 0}, {"machine": gpu, "from_step": 6}]
    )
    assert build._machines([moved, forest]) == (
        f" No machine is recorded for rf's fit. Times compare within one machine only: the CNN run on `{cpu}`, from "
        f"step 6 on `{gpu}`, the baseline on `{cpu}`."
    )
    assert build.BASELINE_MODELS is baselines.MODELS  # one definition (config_lib's), no copy to drift


def test_runs_of_one_config_with_other_settings_are_other_models(comparison, tmp_path):
    """Seeds are averaged only over runs that computed the same thing: a run with another C is a model of its own,
    titled with what differs; a run that differs only where its data lay or how fast it ran joins its seeds."""
    _, workdir, _ = comparison
    for seed in (0, 1):
        shutil.copytree(workdir / "linear_svm" / f"seed_{seed}", tmp_path / f"svm_{seed}")
    other = tmp_path / "svm_other"
    shutil.copytree(workdir / "linear_svm" / "seed_1", other)
    for folder, changes in ((other, {"C": 4.0}), (tmp_path / "svm_1", {"verbose": 0})):
        saved = json.loads((folder / config_lib.CONFIG_FILE).read_text())
        saved["model"].update(changes)
        saved["data"]["dir"] = "/elsewhere"  # operational: not a setting
        (folder / config_lib.CONFIG_FILE).write_text(json.dumps(saved))
    paths = report.build([tmp_path / "svm_0", tmp_path / "svm_1", other], tmp_path / "out")
    summary = table_rows(paths["markdown"].read_text(), "| model |")
    models = json.loads(paths["json"].read_text())["models"]
    assert [(row[0], row[-2]) for row in summary] == [
        ("Linear SVM (model.C=1.0)", "2"),
        ("Linear SVM (model.C=4.0)", "1"),
    ]
    assert list(models) == ["linear_svm_1", "linear_svm_2"]
    assert [r.workdir for r in report.runs.load_models([tmp_path / "svm_0", tmp_path / "svm_1"])[0].runs] == [
        tmp_path / "svm_0",
        tmp_path / "svm_1",
    ]
    (tmp_path / "svm_1" / config_lib.CONFIG_FILE).unlink()  # settings unknown: a model of its own beside known ones
    models = report.runs.load_models([tmp_path / "svm_0", other, tmp_path / "svm_1"])
    assert [(m.title, [r.workdir.name for r in m.runs]) for m in models] == [
        ("Linear SVM (model.C=1.0)", ["svm_0"]),
        ("Linear SVM (model.C=4.0)", ["svm_other"]),
        ("Linear SVM (settings unknown: no config.json)", ["svm_1"]),
    ]
    assert [report.runs.published_accuracy(m) for m in models] == [0.76] * 3  # all the study's config
    assert [len(m.runs) for m in report.runs.load_models([tmp_path / "svm_0", tmp_path / "svm_1"])] == [1, 1]


def test_a_run_is_said_to_differ_from_its_config_file_only_where_it_does(comparison, tmp_path):
    """The report's note names a config file's fields a run changed, reads only configs/NAME.py for a plain name,
    and leaves sys.path as it was."""
    _, workdir, _ = comparison
    run_dir = tmp_path / "svm"
    shutil.copytree(workdir / "linear_svm" / "seed_0", run_dir)

    def changed() -> str:  # the settings are read when a run is loaded
        return report.runs.changed_from_config_file(report.runs.load_member(run_dir))

    assert changed() == "data.num_train=256, data.validation_size=64"
    as_file = config_lib.to_dict(load_config("linear_svm", **{"data.dir": "/elsewhere"}))  # operational: no note
    (run_dir / config_lib.CONFIG_FILE).write_text(json.dumps(as_file))
    path = list(sys.path)
    assert changed() == "" and sys.path == path
    del as_file["model"]["C"]  # a field an earlier version's config.json lacks
    (run_dir / config_lib.CONFIG_FILE).write_text(json.dumps(as_file))
    member = report.runs.load_member(run_dir)
    assert report.runs.changed_from_config_file(member) == "model.C absent"
    member.results["config_name"] = str(tmp_path / "probe")  # a path is never run
    (tmp_path / "probe.py").write_text("raise SystemExit('ran')")
    assert report.runs.changed_from_config_file(member) == ""


def test_the_search_table_heads_with_the_chosen_setting_and_failed_ones_last(tmp_path):
    grid = [
        {"params": {"C": 1.0}, "validation_accuracy": None, "fit_seconds": 0.1, "round": 1, "images": 200},
        {"params": {"C": 2.0}, "validation_accuracy": 0.9, "fit_seconds": 0.1, "round": 0, "images": 100},
        {"params": {"C": 3.0}, "validation_accuracy": 0.8, "fit_seconds": 0.1, "round": 1, "images": 200},
    ]
    member = report.runs.Member("m", tmp_path, {"search": {"grid": grid}}, [], {})
    rows = [row[:3] for row in tables.search_rows(member)]
    assert rows == [["C=3.0", "0.8000", "200"], ["C=1.0", "n/a", "200"], ["C=2.0", "0.9000", "100"]]


def test_the_speedrun_joins_the_comparison_when_asked_under_its_own_title(tmp_path):
    config = load_config("compare", seeds=(0, 1), quick=True)
    assert "speedrun" not in {r.name for r in compare.member_runs(config, tmp_path)}  # off by default
    config.members.speedrun.enabled = True
    runs = [r for r in compare.member_runs(config, tmp_path) if r.name == "speedrun"]
    assert [(r.seed, r.workdir) for r in runs] == [(s, tmp_path / "speedrun" / f"seed_{s}") for s in (0, 1)]
    assert {(r.config.name, r.config.model.depths, r.config.num_epochs) for r in runs} == {("speedrun", (1, 1, 1), 3)}
    workdir = tmp_path / "finished"
    workdir.mkdir()
    fields = dict.fromkeys(metrics.REQUIRED_KEYS, 0) | {"config_name": "speedrun", "model": "vgg_bn"}
    metrics.save_results(workdir, fields)
    assert report.runs.load_member(workdir).title == "Speedrun CNN (beyond the study)"  # not vgg_bn's title


def test_a_members_field_set_on_the_command_line_wins_over_quick_overrides(tmp_path, caplog):
    """quick=True sets its smaller values, but a member's field the command line set (itself or its section) keeps
    the command line's value, and the log says so; without a command line (a config built in Python), quick's."""
    config = load_config("compare", quick=True)
    config.members.cnn.num_epochs, config.members.random_forest.data.num_train = 1, 500
    given = {"quick", "members.cnn.num_epochs", "members.random_forest.data"}
    with caplog.at_level(logging.INFO):
        runs = {r.name: r.config for r in compare.member_runs(config, tmp_path, given)}
    quick = config.quick_overrides
    assert (runs["cnn"].num_epochs, runs["cnn"].data.num_train) == (1, quick.cnn.data.num_train)
    assert runs["random_forest"].data.num_train == 500
    assert runs["random_forest"].model.n_estimators == quick.random_forest.model.n_estimators
    assert "cnn: quick=True keeps the command line's num_epochs=1 over quick_overrides.cnn" in caplog.text
    assert "random_forest: quick=True keeps the command line's data.num_train=500" in caplog.text
    python = {r.name: r.config for r in compare.member_runs(config, tmp_path)}
    assert (python["cnn"].num_epochs, python["random_forest"].data.num_train) == (
        quick.cnn.num_epochs,
        quick.random_forest.data.num_train,
    )


def test_a_named_workdir_for_several_seeds_must_hold_the_seed(tiny_data, tmp_path):
    config = quick_compare_config(tiny_data, seeds=(0, 1))
    config.members.cnn.workdir = str(tmp_path / "cnn")
    with pytest.raises(
        ConfigError, match=r"config\.members\.cnn\.workdir=.* names one folder for 2 seeds; put \{seed\}"
    ):
        run.run(config, tmp_path / "compare")
    config.members.cnn.workdir = str(tmp_path / "cnn_{name}_{seed}")
    with pytest.raises(ConfigError, match=r"only \{seed\} may stand in braces \(KeyError\('name'\)\)"):
        run.run(config, tmp_path / "compare")
    config.members.cnn.workdir = str(tmp_path / "cnn_seed{seed}")  # a folder that does not exist: a typo
    with pytest.raises(ConfigError, match=r"cnn_seed0 does not exist; name the folder of a finished \(or interr"):
        run.run(config, tmp_path / "compare")
    assert not list((tmp_path / "compare").glob("*/seed_*"))  # checked before any member trained
    config.members.cnn.workdir = str(tmp_path / "compare" / "random_forest" / "seed_{seed}")  # another member's
    with pytest.raises(
        ConfigError,
        match=r"config\.members\.cnn \(seed 0\) and config\.members\.random_forest \(seed 0\) name one folder",
    ):
        run.run(config, tmp_path / "compare")
    config.members.cnn.workdir = None
    for seeds in ((1, 1), (0, -1)):  # the comparison's field named, not a member's
        config.seeds = seeds
        with pytest.raises(
            ConfigError, match=rf"config\.seeds={re.escape(str(seeds))} must be distinct integers from 0"
        ):
            run.run(config, tmp_path / "compare")


def test_a_members_bad_field_stops_the_comparison_before_anything_trains(tiny_data, tmp_path):
    config = quick_compare_config(tiny_data, seeds=(0,))
    config.members.linear_svm.model.C = 0.0
    with pytest.raises(ConfigError, match=r"^config\.members\.linear_svm\.model\.C=0\.0 must be positive"):
        run.run(config, tmp_path)
    assert not list(tmp_path.glob("*/seed_*")) and not (tmp_path / config_lib.CONFIG_FILE).exists()
    config.members.linear_svm.model.C = 1.0
    config.members.random_forest_search.enabled = True
    config.members.random_forest_search.search.factor = 1  # its message suggests a flag: the member's
    with pytest.raises(ConfigError) as failed:
        run.run(config, tmp_path)
    assert str(failed.value).startswith("config.members.random_forest_search.search.factor=1 must be a number above")
    assert "e.g. --config.members.random_forest_search.search.factor=3." in str(failed.value)
    config.members.random_forest_search.enabled = False
    config.members.linear_svm.model.penalty = "l1"  # a form scikit-learn refuses only when its fit starts
    config.members.linear_svm.model.loss = "hinge"
    with pytest.raises(ConfigError, match=r"^config\.members\.linear_svm\.model: LinearSVC cannot fit penalty='l1'"):
        run.run(config, tmp_path)
    assert not list(tmp_path.glob("*/seed_*")) and not (tmp_path / config_lib.CONFIG_FILE).exists()


def test_what_a_cnn_member_cannot_run_on_these_devices_stops_the_comparison_before_anything_trains(
    tiny_data, tmp_path, monkeypatch
):
    """A CNN member's batch that the devices cannot split, or host overlap over several CPU devices, is found with the
    other checks, not once the members before it have trained (minutes of baselines); named as the member's field.
    Eight devices here are a stand-in mesh: the checks read its size and platform alone."""
    import types

    eight = types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform="cpu")] * 8, dtype=object))
    monkeypatch.setattr(parallel, "make_mesh", lambda devices=None: eight)
    config = quick_compare_config(tiny_data, seeds=(0,))
    config.members.cnn.batch_size = 60
    with pytest.raises(UserError, match=r"^config\.members\.cnn\.batch_size=60 cannot be split over 8 devices; use"):
        run.run(config, tmp_path)
    config.members.cnn.batch_size, config.members.cnn.host_overlap = 64, "on"
    with pytest.raises(ConfigError, match=r"^config\.members\.cnn\.host_overlap='on' over 8 CPU devices: train calls"):
        run.run(config, tmp_path)
    assert not list(tmp_path.glob("*/seed_*")) and not (tmp_path / config_lib.CONFIG_FILE).exists()
    member = tmp_path / "cnn" / "seed_0"  # a member's run trained with batch 60, to go on from: its batch stays
    (member / "checkpoints" / "4").mkdir(parents=True)
    (member / config_lib.CONFIG_FILE).write_text(json.dumps({"kind": "cnn", "batch_size": 60}))
    config.members.cnn.batch_size, config.members.cnn.host_overlap = 60, "auto"
    with pytest.raises(
        UserError, match=rf"batch_size=60 cannot be split over 8 devices; the run in {member}/checkpoints"
    ):
        run.run(config, tmp_path)


def test_a_refused_rerun_of_a_comparison_leaves_every_config_json_as_it_was(comparison, tiny_data, tmp_path):
    """More epochs for the CNN, allowed on resume, but on other training files (the same test files, which the
    comparison checks before anything trains): its run is refused, and neither its config.json nor the comparison's
    keeps the refused command's fields, so the first command reruns as before."""
    config, workdir, results = comparison
    shutil.copytree(workdir, tmp_path / "compare")
    configs = sorted((tmp_path / "compare").glob("**/config.json"))
    before = [path.read_bytes() for path in configs]
    other = helpers.write_idx_dataset(tmp_path / "other", n_train=320, n_test=100, seed=1)  # tiny_data's sizes
    for test_file in tiny_data.glob("t10k-*"):
        shutil.copy(test_file, other)
    more = ml_collections.ConfigDict(config.to_dict())
    more.resume_with_changes = more.members.cnn.resume_with_changes = True
    more.members.cnn.num_epochs = config.quick_overrides.cnn.num_epochs + 1  # over quick's, as a flag
    more.members.cnn.data.dir = str(other)
    with pytest.raises(ConfigError, match=r"seed_0/checkpoints was trained on other data than idx:.* train-images"):
        run.run(more, tmp_path / "compare", given={"members.cnn.num_epochs", "members.cnn.data.dir"})
    assert len(configs) == 7 and [path.read_bytes() for path in configs] == before
    assert run.run(config, tmp_path / "compare") == results


def test_a_members_config_json_rewritten_for_operational_fields_alone_keeps_nothing_new():
    """Whether a comparison refused part-way keeps the refused command's fields: only where a member's config.json
    took fields that change what it computes (a reused run's config.json is rewritten with its new data.dir)."""
    member = config_lib.to_dict(load_config("cnn"))
    moved = {**member, "data": {**member["data"], "dir": "/elsewhere"}, "eval_batch_size": 25}
    longer = {**member, "num_epochs": member["num_epochs"] + 1}
    assert not compare._took_new_fields(member, moved) and not compare._took_new_fields(None, None)
    assert compare._took_new_fields(member, longer) and compare._took_new_fields(None, member)


def test_a_comparison_takes_other_seeds_and_members_reusing_its_runs(comparison, tmp_path):
    """Seeds and members are the comparison's choice, not its runs' settings: fewer seeds, or a member left out,
    reuses the finished runs there are (each run's own config.json guards what it computed)."""
    config, workdir, results = comparison
    shutil.copytree(workdir, tmp_path / "compare")
    paths = sorted((tmp_path / "compare").glob("*/seed_*/results.json"))
    stamps = [p.stat().st_mtime_ns for p in paths]
    fewer = ml_collections.ConfigDict(config.to_dict())
    fewer.seeds, fewer.members.linear_svm.enabled = (1,), False
    out = run.run(fewer, tmp_path / "compare")
    assert out == {name: {1: results[name][1]} for name in ("cnn", "random_forest")}
    assert stamps == [p.stat().st_mtime_ns for p in paths]
    summary = table_rows((tmp_path / "compare" / "report.md").read_text(), "| model | test accuracy")
    assert [(row[0], row[-2]) for row in summary] == [("CNN (Flax)", "1"), ("Random forest", "1")]


def test_a_damaged_history_or_predictions_file_is_one_error_naming_it(comparison, tmp_path):
    _, workdir, _ = comparison
    run_dir = tmp_path / "cnn"
    shutil.copytree(workdir / "cnn" / "seed_0", run_dir)
    records = metrics.read_history(run_dir)
    metrics.write_history(run_dir, [{k: v for k, v in r.items() if k != "validation_loss"} for r in records])
    with pytest.raises(UserError, match=r"cnn/history\.jsonl has epochs without \['validation_loss'\], which the"):
        report.build([run_dir], tmp_path / "out")
    metrics.write_history(run_dir, records)
    (run_dir / metrics.PREDICTIONS_FILE).write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(UserError, match=r"cnn/predictions\.npz cannot be read"):
        report.build([run_dir], tmp_path / "out")
    shutil.rmtree(run_dir)
    shutil.copytree(workdir / "cnn" / "seed_0", run_dir)  # scored on other test images: no pair to test
    saved = dict(np.load(run_dir / metrics.PREDICTIONS_FILE))
    saved["labels"] = np.roll(saved["labels"], 1)
    np.savez(run_dir / metrics.PREDICTIONS_FILE, **saved)
    with pytest.raises(UserError, match=r"cnn and .*seed_0 were scored on different test images; pair runs on the"):
        report.build([run_dir, workdir / "random_forest" / "seed_0"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_named_twice_or_a_file_named_as_a_run_is_one_error(comparison, tmp_path):
    _, workdir, _ = comparison
    svm = workdir / "linear_svm" / "seed_0"
    again = svm / ".." / "seed_0"
    with pytest.raises(UserError, match=r"seed_0/\.\./seed_0 is named twice \(also as .*seed_0\): name each run's"):
        report.build([svm, again], tmp_path / "out")
    with pytest.raises(UserError, match=r"seed_0/results\.json is a file, not a run's folder: name the folder"):
        report.build([svm / "results.json"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_comparisons_folder_reports_its_runs_and_a_folder_without_results_says_why(comparison, tmp_path):
    """A comparison's workdir (or a report's folder) stands for the runs its report.json lists: the same models and
    figures again. A folder that does not exist, an unfinished run (a CNN's, a baseline's, a comparison's) and a
    report whose runs are gone are each one error saying what to name or run instead."""
    _, workdir, _ = comparison
    report.build([workdir], tmp_path / "again")
    first, again = (json.loads((folder / "report.json").read_text()) for folder in (workdir, tmp_path / "again"))
    assert again["models"] == first["models"] and again["pairs"] == first["pairs"]
    with pytest.raises(UserError, match=r"nope does not exist: name a finished run's folder \(the --workdir it"):
        report.build([tmp_path / "nope"], tmp_path / "out")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(workdir / "cnn" / "seed_0", unfinished)
    (unfinished / "results.json").unlink()
    steps = config_lib.checkpoint_steps(unfinished)
    with pytest.raises(
        UserError, match=rf"unfinished holds an unfinished run \(its newest checkpoint is step {steps[-1]}\)"
    ):
        report.build([unfinished], tmp_path / "out")
    fitted = tmp_path / "fitted"  # a baseline stopped between its fit and its scores
    shutil.copytree(workdir / "random_forest" / "seed_0", fitted)
    (fitted / "results.json").unlink()
    with pytest.raises(UserError, match=r"fitted holds a fitted baseline not yet scored: rerun its command to score"):
        report.build([fitted], tmp_path / "out")
    (fitted / config_lib.MODEL_FILE).unlink()
    with pytest.raises(UserError, match=r"fitted holds a run that has not finished \(its config\.json, no results"):
        report.build([fitted], tmp_path / "out")
    stopped = tmp_path / "stopped"  # a comparison stopped before its report
    stopped.mkdir()
    shutil.copy(workdir / config_lib.CONFIG_FILE, stopped)
    with pytest.raises(UserError, match=r"stopped holds a comparison that has not finished \(no report\.json\): rerun"):
        report.build([stopped], tmp_path / "out")
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "again", moved)  # the report alone, its runs named by paths it does not hold
    listing = json.loads((moved / "report.json").read_text())
    listing["models"]["cnn"]["seeds"]["0"]["workdir"] = str(tmp_path / "gone")
    (moved / "report.json").write_text(json.dumps(listing))
    with pytest.raises(UserError, match=rf"moved holds a report; its runs {tmp_path}/gone have no results\.json"):
        report.build([moved], tmp_path / "out")
    (moved / "report.json").write_text('{"models": [1, 2]}')  # damaged: neither a run nor a report's record
    with pytest.raises(UserError, match=r"moved/report\.json is not a report's record \(.*\): name the runs to report"):
        report.build([moved], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_report_built_with_relative_paths_finds_its_runs_from_anywhere_and_after_a_move(
    comparison, tmp_path, monkeypatch
):
    """report.json records the folder it was built from and its --out as given: its relative run paths resolve
    from another current folder, and from the report's folder once the whole tree has moved."""
    from fmnist_jax.report import runs

    _, workdir, _ = comparison
    tree = tmp_path / "tree"
    shutil.copytree(workdir, tree / "quick")
    listing = json.loads((tree / "quick" / "report.json").read_text())
    for m in listing["models"].values():
        for run_ in m["seeds"].values():  # as `main.py --workdir=quick` from `tree` writes them
            run_["workdir"] = str("quick" / pathlib.Path(run_["workdir"]).relative_to(workdir))
    listing |= {"built_from": str(tree), "out": "quick"}
    (tree / "quick" / "report.json").write_text(json.dumps(listing))
    expected = [tree / "quick" / name / f"seed_{seed}" for name in listing["models"] for seed in (0, 1)]
    monkeypatch.chdir(tmp_path)
    assert sorted(runs.report_runs(tree / "quick")) == sorted(expected)
    shutil.move(tree, tmp_path / "moved")
    moved = [tmp_path / "moved" / path.relative_to(tree) for path in expected]
    assert sorted(runs.report_runs(tmp_path / "moved" / "quick")) == sorted(moved)
    assert {"built_from", "out"} <= json.loads((workdir / "report.json").read_text()).keys()


def test_a_report_folder_that_cannot_be_made_is_named_and_one_that_failed_half_way_is_removed(
    comparison, tmp_path, monkeypatch
):
    _, workdir, _ = comparison
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"cannot make the report's folder .*a_file/plots .*choose another --out"):
        report.build([workdir / "linear_svm" / "seed_0"], tmp_path / "a_file")
    report.build([workdir / "linear_svm" / "seed_0"], tmp_path / "kept")
    before = snapshot(tmp_path / "kept")

    def fails(*args):
        (tmp_path / "new" / "other").mkdir(parents=True, exist_ok=True)  # another command's, made meanwhile
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_plots, "plot_samples", fails)  # the last figure: the others are written by then
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "deep" / "er", tmp_path / "new" / "report", tmp_path / "empty", tmp_path / "kept"):
        with pytest.raises(OSError, match="No space left"):
            report.build([workdir / "linear_svm" / "seed_0"], out)
    assert not (tmp_path / "deep").exists() and [p.name for p in (tmp_path / "new").iterdir()] == ["other"]
    assert not any((tmp_path / "empty").iterdir())
    assert snapshot(tmp_path / "kept").keys() == before.keys()


def test_a_report_rebuilt_into_the_same_folder_keeps_only_its_own_figures(comparison, tmp_path):
    """An earlier report's figures of models the new one does not hold are removed (they were left beside it); a file
    the report did not write stays."""
    _, workdir, _ = comparison
    runs = [workdir / name / "seed_0" for name in ("random_forest", "linear_svm")]
    report.build(runs, tmp_path)
    assert any("linear_svm" in p.name for p in (tmp_path / "plots").glob("*.png"))
    (tmp_path / "plots" / "mine.png").write_bytes(b"a figure of the user's own")
    md = report.build(runs[:1], tmp_path)["markdown"].read_text()
    shown = set(re.findall(r"plots/([\w.-]+\.png)", md))
    assert shown and {p.name for p in (tmp_path / "plots").iterdir()} == shown | {"mine.png"}
    assert sorted(shown) == json.loads((tmp_path / "report.json").read_text())["figures"]
    report.build(runs, tmp_path)  # again with both, then as if by a version whose report.json had no figures
    record = json.loads((tmp_path / "report.json").read_text())
    (tmp_path / "report.json").write_text(json.dumps({k: v for k, v in record.items() if k != "figures"}))
    report.build(runs[:1], tmp_path)
    assert {p.name for p in (tmp_path / "plots").iterdir()} == shown | {"mine.png"}
    outside = tmp_path.parent / f"{tmp_path.name}_keep.png"
    outside.write_bytes(b"not the report's")
    record = json.loads((tmp_path / "report.json").read_text())  # figures no report writes: beside or above plots/
    record["figures"] += [f"../../{outside.name}", str(outside), "../report.md"]
    (tmp_path / "report.json").write_text(json.dumps(record))
    report.build(runs[:1], tmp_path)
    assert outside.exists() and (tmp_path / "report.md").exists()
    report.build(runs, tmp_path)
    both = {p.name for p in (tmp_path / "plots").iterdir()}
    assert both > shown | {"mine.png"}
    for damaged in ("5", '["x"]'):  # report.json no object: rebuilt over, none of the figures it listed known: kept
        (tmp_path / "report.json").write_text(damaged)
        report.build(runs[:1], tmp_path)
        assert {p.name for p in (tmp_path / "plots").iterdir()} == both


def test_report_json_holds_every_number_the_report_shows(comparison):
    _, workdir, results = comparison
    data = json.loads((workdir / "report.json").read_text())
    assert sorted(data["models"]) == ["cnn", "linear_svm", "random_forest"]
    for name, model in data["models"].items():
        assert sorted(model["seeds"]) == ["0", "1"]
        values = [results[name][s]["test_accuracy"] for s in (0, 1)]
        assert model["test_accuracy"] == {"mean": np.mean(values), "std": np.std(values, ddof=1), "values": values}
        for seed, run_ in model["seeds"].items():
            assert run_["test_accuracy_ci95"] == list(stats.accuracy_interval(correct(workdir / name / f"seed_{seed}")))
            own = results[name][int(seed)]
            fields = ("test_accuracy", "validation_accuracy", "train_seconds", "predict_seconds", "per_class")
            assert {k: run_[k] for k in (*fields, "num_params")} == {k: own[k] for k in (*fields, "num_params")}
    assert [(p["a"], p["b"]) for p in data["pairs"]] == [
        ("cnn", "random_forest"),
        ("cnn", "linear_svm"),
        ("random_forest", "linear_svm"),
    ]
    md = (workdir / "report.md").read_text()
    largest = [max(test["p_value"] for test in pair["seeds"].values()) for pair in data["pairs"]]
    assert [pair["p_holm"] for pair in data["pairs"]] == stats.holm(largest)  # corrected for the 3 pairs
    for pair in data["pairs"]:
        assert pair["sentence"] in md
        for seed, test in pair["seeds"].items():
            a, b = (correct(workdir / pair[k] / f"seed_{seed}") for k in ("a", "b"))
            assert test == {
                "difference": a.mean() - b.mean(),
                "ci95": list(stats.paired_difference_interval(a, b, seed=int(seed))),
                **stats.mcnemar(a, b),
            }
            assert isinstance(test["p_value"], float)


def seed_test(difference, low, high, p):
    return {"difference": difference, "ci95": [low, high], "p_value": p, "only_a_correct": 0, "only_b_correct": 0}


def tie_test():
    return seed_test(0.0, -0.001, 0.001, 1.0)


def test_pair_sentences_say_what_the_tests_establish():
    one = {0: seed_test(0.026, 0.020, 0.032, 1e-9)}
    expected = "The CNN is more accurate than the forest by 2.6 points (95% CI 2.0 to 3.2; McNemar p < 1e-6)."
    assert sentences.pair_sentence("The CNN", "the forest", one) == expected
    flipped = {0: seed_test(-0.026, -0.032, -0.020, 1e-9)}
    assert sentences.pair_sentence("the forest", "The CNN", flipped) == expected
    three = {s: seed_test(0.010 + 0.001 * s, 0.004, 0.018, p) for s, p in ((0, 0.01), (1, 0.002), (2, 0.03))}
    assert sentences.pair_sentence("A", "B", three) == (
        "A is more accurate than B by 1.1 points (each seed's 95% CI within 0.4 to 1.8; McNemar p ≤ 0.030 on every "
        "seed)."
    )
    close = {0: seed_test(0.004, -0.001, 0.009, 0.2), 1: seed_test(0.002, -0.003, 0.007, 0.7)}
    assert sentences.pair_sentence("A", "B", close) == (
        "A is ahead of B by 0.3 points on average, a difference these test images do not establish (each seed's "
        "95% CI within -0.3 to 0.9; McNemar p from 0.2 to 0.7 across seeds)."
    )
    # Ahead on both seeds, but one seed's test alone below the level: not established (a pair's p is its largest).
    mixed = {0: seed_test(0.012, 0.004, 0.020, 0.01), 1: seed_test(0.006, -0.002, 0.014, 0.2)}
    assert sentences.pair_sentence("A", "B", mixed) == (
        "A is ahead of B by 0.9 points on average, a difference these test images do not establish (each seed's "
        "95% CI within -0.2 to 2.0; McNemar p from 0.01 to 0.2 across seeds)."
    )
    # Each seed's difference established, but not the same way: each side's seeds are named, no winner.
    opposite = {0: seed_test(0.01, 0.005, 0.015, 0.001), 1: seed_test(-0.008, -0.012, -0.004, 0.001)}
    assert sentences.pair_sentence("A", "B", opposite) == (
        "The seeds disagree on which of A and B is more accurate: A is ahead on seed 0 (95% CI 0.5 to 1.5 points; "
        "McNemar p = 0.001), B on seed 1 (95% CI 0.4 to 1.2 points; McNemar p = 0.001); it depends on the training "
        "run, and neither is established."
    )
    balanced = {0: seed_test(0.002, -0.003, 0.007, 0.4), 1: seed_test(-0.002, -0.007, 0.003, 0.4), 2: tie_test()}
    assert sentences.pair_sentence("A", "B", balanced).startswith(
        "The seeds disagree on which of A and B is more accurate: A is ahead on seed 0 (95% CI -0.3 to 0.7 points; "
        "McNemar p = 0.400), B on seed 1 (95% CI -0.3 to 0.7 points; McNemar p = 0.400), neither on seed 2; "
    )
    # Ahead on two seeds, equal on the third: no seed has the other ahead, but neither is the difference established.
    ahead_or_equal = {0: three[0], 1: tie_test(), 2: three[2]}
    assert sentences.pair_sentence("A", "B", ahead_or_equal) == (
        "A is ahead of B by 0.7 points on average, a difference these test images do not establish (each seed's 95% "
        "CI within -0.1 to 1.8; McNemar p from 0.01 to 1 across seeds; equal on seed 1)."
    )
    # One seed: its difference is not an average, and a difference below 0.1 points keeps a second decimal; the
    # seed is named once, also where another seed went untested.
    small = {1: seed_test(0.0005, -0.003, 0.004, 0.9)}
    assert sentences.pair_sentence("A", "B", small, untested=[0]) == (
        "A is ahead of B by 0.05 points on seed 1, a difference these test images do not establish (95% CI -0.3 to "
        "0.4; McNemar p = 0.900). No paired test for seed 0 (a run or its predictions.npz missing)."
    )
    tiny = {s: seed_test(d, -0.003, 0.003, 0.9) for s, d in ((0, 0.0001), (1, 0.0), (2, 0.0))}
    assert sentences.pair_sentence("A", "B", tiny).startswith("A is ahead of B by under 0.01 points on average, ")
    tie = {0: seed_test(0.0, -0.001, 0.001, 1.0)}
    assert (
        sentences.pair_sentence("A", "B", tie)
        == "A and B are equally accurate on these test images (McNemar p = 1.000)."
    )
    assert "no paired test" in sentences.pair_sentence("A", "B", {})
    # Seeds one model lacks (or lacks predictions for) are named, never covered by "on every seed".
    two = {s: three[s] for s in (0, 2)}
    assert sentences.pair_sentence("A", "B", two, untested=[1]) == (
        "A is more accurate than B by 1.1 points (each seed's 95% CI within 0.4 to 1.8; McNemar p ≤ 0.030 on seeds "
        "0 and 2). No paired test for seed 1 (a run or its predictions.npz missing)."
    )
    # With several pairs a difference is established only after Holm's correction for their number.
    assert sentences.pair_sentence("A", "B", three, corrected=(0.045, 3)) == (
        "A is more accurate than B by 1.1 points (each seed's 95% CI within 0.4 to 1.8; McNemar p ≤ 0.030 on every "
        "seed; Holm-adjusted for the 3 pairs, p = 0.045)."
    )
    assert sentences.pair_sentence("A", "B", three, corrected=(0.09, 3)) == (
        "A is ahead of B by 1.1 points on average, a difference these test images do not establish once corrected "
        "for the 3 pairs (each seed's 95% CI within 0.4 to 1.8; McNemar p ≤ 0.030 on every seed; Holm-adjusted for "
        "the 3 pairs, p = 0.090)."
    )
    assert sentences.pair_sentence("A", "B", {0: three[0]}, corrected=(0.06, 6)).startswith(
        "A is ahead of B by 1.0 points on seed 0, a difference these test images do not establish once corrected "
    )
    assert sentences.pair_sentence("A", "B", three, corrected=(0.03, 1)) == sentences.pair_sentence("A", "B", three)
    assert sentences.pair_sentence("A", "B", one, untested=[1, 2]).endswith(
        "(95% CI 2.0 to 3.2; McNemar p < 1e-6 on seed 0). No paired test for seeds 1 and 2 (a run or its "
        "predictions.npz missing)."
    )


def test_a_pair_names_the_seeds_it_could_not_test(comparison, tmp_path):
    """A seed whose predictions are gone is named as untested in the report, not covered by the other's test."""
    _, workdir, _ = comparison
    for name in ("random_forest", "linear_svm"):
        for seed in (0, 1):
            shutil.copytree(workdir / name / f"seed_{seed}", tmp_path / name / f"seed_{seed}")
    (tmp_path / "random_forest" / "seed_1" / metrics.PREDICTIONS_FILE).unlink()
    paths = report.build(
        [tmp_path / n / f"seed_{s}" for n in ("random_forest", "linear_svm") for s in (0, 1)], tmp_path
    )
    (pair,) = json.loads(paths["json"].read_text())["pairs"]
    assert (list(pair["seeds"]), pair["untested_seeds"]) == (["0"], [1])
    assert "every seed" not in pair["sentence"]
    assert pair["sentence"].endswith(" No paired test for seed 1 (a run or its predictions.npz missing).")
    assert pair["sentence"] in paths["markdown"].read_text()
    forest = json.loads(paths["json"].read_text())["models"]["random_forest"]["seeds"]
    with_predictions = report.runs.load_member(workdir / "random_forest" / "seed_1")
    assert forest["1"]["test_accuracy_ci95"] == list(report.runs.accuracy_interval(with_predictions))  # the counts'
    runs = [
        workdir / "random_forest" / "seed_0",
        workdir / "random_forest" / "seed_1",
        workdir / "linear_svm" / "seed_0",
    ]
    (pair,) = json.loads(report.build(runs, tmp_path / "one_svm")["json"].read_text())["pairs"]
    assert (list(pair["seeds"]), pair["untested_seeds"]) == (["0"], [1])  # the other model has no run of seed 1


@pytest.mark.heavy
@pytest.mark.parametrize("method", ["grid", "halving"])
def test_a_forest_search_scores_every_setting_on_validation_and_refits_the_best(tiny_data, tmp_path, method):
    config = load_config(
        "random_forest_search",
        **{
            "data.dir": str(tiny_data),
            "data.validation_size": 64,
            "search.method": method,
            "search.grid.n_estimators": (3, 12),
            "search.grid.max_features": ("sqrt", 0.1),
        },
    )
    results = run.run(config, tmp_path)
    search = results["search"]
    settings = {tuple(sorted(g["params"].items())) for g in search["grid"]}
    assert len(settings) == 4 and search["method"] == method
    finalists = search["grid"] if method == "grid" else [g for g in search["grid"] if g["round"] == 1]
    assert search["best_validation_accuracy"] == max(g["validation_accuracy"] for g in finalists)
    assert search["best_params"] in [g["params"] for g in finalists]
    model = joblib.load(tmp_path / "model.joblib")[-1]
    assert model.n_estimators == search["best_params"]["n_estimators"]
    assert model.max_features == search["best_params"]["max_features"]
    out = report.build([tmp_path], tmp_path / "report")
    md = out["markdown"].read_text()
    rows = table_rows(md, "| setting |")
    assert "## Searches" in md and len(rows) == len(search["grid"])
    top = max(finalists, key=lambda g: g["validation_accuracy"])  # the chosen setting heads the table
    assert rows[0][1:3] == [metrics.fmt(top["validation_accuracy"]), f"{top['images']:,}" if "images" in top else "all"]


def test_a_search_needs_a_validation_split_and_known_fields(tiny_data, tmp_path):
    config = load_config("linear_svm_search", **{"data.dir": str(tiny_data), "data.validation_size": 0})
    with pytest.raises(ConfigError, match="a search scores settings on the validation split"):
        run.run(config, tmp_path / "a")
    config = load_config("linear_svm_search", **{"data.dir": str(tiny_data), "data.validation_size": 64})
    config.search.method = "random"
    with pytest.raises(ConfigError, match=r"config\.search\.method='random' must be one of"):
        run.run(config, tmp_path / "b")


def test_a_comparison_ignores_speed_only_member_fields_but_not_the_maths(tiny_data, tmp_path):
    config = quick_compare_config(tiny_data)
    config_lib.save_or_check(config, tmp_path)
    (tmp_path / "cnn").mkdir()  # a member has started: the workdir holds a run (a bare config.json may be replaced)
    config.members.cnn.steps_per_call = 2  # speed only
    config.members.cnn.tensorboard.enabled = False
    config_lib.save_or_check(config, tmp_path)
    config.members.cnn.learning_rate = 0.01
    with pytest.raises(ConfigError, match=r"members\.cnn\.learning_rate: 0\.001 -> 0\.01"):
        config_lib.save_or_check(config, tmp_path)


def test_the_stronger_cnn_is_the_fourth_member_with_its_curves(comparison, tiny_data, tmp_path):
    default = load_config("compare")
    assert default.members.vgg_bn.enabled and "vgg_bn" in default.quick_overrides  # full and quick comparisons
    assert default.members.vgg_bn.model == load_config("vgg_bn").model  # the recipe's own model
    _, finished, _ = comparison
    for name in ("cnn", "random_forest", "linear_svm"):  # the study's members of seed 0, finished: only VGG-BN trains
        shutil.copytree(finished / name / "seed_0", tmp_path / name / "seed_0")
    config = quick_compare_config(tiny_data, beyond=True, seeds=(0,))
    # The narrow recipe that tests/test_vgg_bn_runs.py trains on the same 256 images: the same maths, so the member
    # loads that module's compiled programs from the persistent cache. Its epochs come from the quick overrides,
    # which are applied after the member's own fields (those keep vgg_bn's 20).
    for field, value in NARROW_RECIPE.items():
        if field != "num_epochs":
            parent, _, leaf = field.rpartition(".")
            (config_lib.get(config.members.vgg_bn, parent) if parent else config.members.vgg_bn)[leaf] = value
    config.quick_overrides.vgg_bn.num_epochs = NARROW_RECIPE["num_epochs"]
    results = run.run(config, tmp_path)
    assert list(results) == ["cnn", "random_forest", "linear_svm", "vgg_bn"]
    assert results["cnn"][0] == metrics.load_results(finished / "cnn" / "seed_0")  # reused, not retrained
    beyond = results["vgg_bn"][0]
    assert beyond == metrics.load_results(tmp_path / "vgg_bn" / "seed_0")
    assert [r["epoch"] for r in metrics.read_history(tmp_path / "vgg_bn" / "seed_0")] == [1, 2]  # the quick epochs
    convs = 9 * (1 * 8 + 8 * 16 + 16 * 16)  # one convolution in each stage
    norms = 2 * (8 + 16 + 16)
    head = 3 * 3 * 16 * 256 + 256 + 256 * 10 + 10  # the recipe's hidden layer of 256, then the 10 classes
    assert beyond["model"] == "vgg_bn" and beyond["num_params"] == convs + norms + head
    md = (tmp_path / "report.md").read_text()
    summary = table_rows(md, "| model | test accuracy")
    assert [row[0] for row in summary] == ["CNN (Flax)", "Random forest", "Linear SVM", "VGG-BN CNN (beyond the study)"]
    assert summary[3][1].startswith(f"{beyond['test_accuracy']:.4f}")  # its own accuracy
    assert summary[3][3] == "n/a"  # no published figure: the study had no such model
    assert "plots/curves_vgg_bn.png" in md and (tmp_path / "plots" / "curves_vgg_bn.png").stat().st_size > 0
    pairs = json.loads((tmp_path / "report.json").read_text())["pairs"]
    assert ("cnn", "vgg_bn") in [(p["a"], p["b"]) for p in pairs]


def test_timings_over_seeds_say_how_many_seeds_they_cover_and_throughput_is_images_over_seconds(tmp_path):
    """A seed without a timing is not averaged in silently; images/s is all images over all seconds (10,000 images
    in 1 s and in 3 s: 5,000 images/s, where the mean of the two rates says 6,667)."""

    def member(seed, train, predict):
        results = {"seed": seed, "train_seconds": train, "predict_seconds": predict}
        results["samples_per_second"] = 10_000 / predict if predict else None
        return report.runs.Member("m", tmp_path, {**results, "validation_accuracy": None}, [], {})

    model = report.runs.Model("m", "M", [member(0, 100.0, 1.0), member(1, None, 3.0)])
    assert tables._mean_cell(model.values("train_seconds"), tables.fmt_seconds) == "100.0 s (1 of 2 seeds)"
    assert tables._mean_cell(model.values("predict_seconds"), tables.fmt_seconds) == "2.0 s"
    assert tables._throughput(model) == "5,000"
    model.runs.append(member(2, 50.0, None))
    assert tables._throughput(model) == "5,000 (2 of 3 seeds)"
    assert tables._mean_cell(model.values("validation_accuracy"), tables.fmt) == tables.fmt(None)
