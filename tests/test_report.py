"""report.py and the compare kind: the quick comparison end to end, and the report from any workdirs."""

import base64
import re

import numpy as np
import pytest

from conftest import load_config, run_main
from fmnist_jax import metrics, report, run


@pytest.fixture(scope="module")
def comparison(tiny_data, tmp_path_factory):
    """The quick comparison on the tiny data set (quick overrides shrunk to fit it)."""
    config = load_config("compare", quick=True)
    for name in ("cnn", "random_forest", "linear_svm"):
        config.members[name].data.dir = str(tiny_data)
        config.quick_overrides[name].data.num_train = 256
        config.quick_overrides[name].data.validation_size = 64
    config.members.cnn.steps_per_call = 4
    workdir = tmp_path_factory.mktemp("compare")
    return config, workdir, run.run(config, workdir)


def table_rows(markdown, header_start):
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_quick_comparison_writes_every_section_with_the_members_numbers(comparison):
    config, workdir, results = comparison
    assert sorted(results) == ["cnn", "linear_svm", "random_forest"]
    for name in results:
        assert results[name] == metrics.load_results(workdir / name)
    assert results["cnn"]["num_params"] == 438_026 and len(results["cnn"]) > 10
    md = (workdir / "report.md").read_text()
    for section in ("## Summary", "## Per class: precision, recall, F1", "## Most confused classes",
                    "## Confusion matrices", "## Training curves", "## Misclassified test images", "## The classes"):
        assert section in md
    summary = table_rows(md, "| model | test accuracy")
    assert [row[0] for row in summary] == ["CNN (Flax)", "Random forest", "Linear SVM"]
    for row, name, study in zip(summary, ("cnn", "random_forest", "linear_svm"), ("0.8997", "0.8790", "0.7600")):
        assert row[1] == f"{results[name]['test_accuracy']:.4f}" and row[2] == study
        assert row[3] == f"{results[name]['validation_accuracy']:.4f}"
        assert row[4] == f"{results[name]['num_params']:,}"
    per_class = table_rows(md, "| class |")
    assert len(per_class) == 10 and per_class[6][0] == "Shirt"
    shirt_f1 = [float(c.strip("*")) for c in per_class[6][7:10]]
    assert shirt_f1 == [round(results[n]["per_class"]["Shirt"]["f1"], 3) for n in ("cnn", "random_forest", "linear_svm")]
    assert "All models are scored on the same 100 test images" in md
    images = re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", md)
    assert {"plots/confusion_cnn.png", "plots/curves_cnn.png", "plots/errors_cnn.png", "plots/samples_per_class.png",
            "plots/f1_per_class.png", "plots/confusion_random_forest.png", "plots/confusion_linear_svm.png"} <= set(images)
    for image in images:
        assert (workdir / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained(comparison):
    _, workdir, _ = comparison
    page = (workdir / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(re.findall(r"!\[", (workdir / "report.md").read_text()))
    assert all(base64.b64decode(e)[:4] == b"\x89PNG" for e in embedded)
    assert "src=\"plots/" not in page and "<table>" in page and "Shirt" in page


def test_rerun_reuses_finished_members(comparison):
    config, workdir, results = comparison
    stamps = {n: (workdir / n / "results.json").stat().st_mtime_ns for n in results}
    assert run.run(config, workdir) == results
    assert stamps == {n: (workdir / n / "results.json").stat().st_mtime_ns for n in results}


def test_named_member_workdir_is_reported_not_retrained(comparison, tmp_path):
    config, workdir, results = comparison
    config.members.cnn.workdir = str(workdir / "cnn")
    out = run.run(config, tmp_path)
    assert out["cnn"] == results["cnn"] and not (tmp_path / "cnn").exists()
    config.members.cnn.workdir = None


def test_confused_pairs_in_words():
    cm = np.zeros((10, 10), int)
    np.fill_diagonal(cm, 90)
    cm[6, 0], cm[6, 6] = 12, 88  # Shirt -> T-shirt/top: 12 of 100
    cm[4, 2] = 10  # Coat -> Pullover: 10 of 100
    pairs = report.confused_pairs(cm, top=2)
    assert pairs[0] == ("Shirt", "T-shirt/top", pytest.approx(0.12))
    assert pairs[1][:2] == ("Coat", "Pullover")


def test_report_command_line(comparison, tmp_path):
    _, workdir, _ = comparison
    assert report.main([str(workdir / "cnn"), str(workdir / "linear_svm"), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert [r[0] for r in table_rows(md, "| model |")] == ["CNN (Flax)", "Linear SVM"]
    assert report.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_compare_through_main_rejects_other_modes(tmp_path):
    result = run_main("--config=configs/compare.py", f"--workdir={tmp_path}", "--config.mode=predict")
    assert result.returncode == 2 and "a comparison only trains and reports" in result.stderr


def test_two_runs_of_one_model_get_distinct_titles_and_files(comparison, tmp_path):
    import shutil  # pylint: disable=import-outside-toplevel

    _, workdir, _ = comparison
    for name in ("svm_a", "svm_b"):
        shutil.copytree(workdir / "linear_svm", tmp_path / name)
    paths = report.build([tmp_path / "svm_a", tmp_path / "svm_b"], tmp_path / "out")
    md = paths["markdown"].read_text()
    assert [r[0] for r in table_rows(md, "| model |")] == ["Linear SVM (svm_a)", "Linear SVM (svm_b)"]
    assert {"confusion_linear_svm_svm_a.png", "confusion_linear_svm_svm_b.png"} <= {
        p.name for p in paths["plots"].iterdir()}
