"""metrics.py: the shared scoring function and the results.json contract."""

import errno
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from fmnist_jax import data, files, metrics

NAMES = ("a", "b", "c")


def test_scores_match_hand_computed_values():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    s = metrics.evaluate(y_true, y_pred, class_names=NAMES)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert s["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert s["per_class"]["b"]["precision"] == pytest.approx(0.5) and s["per_class"]["b"]["recall"] == 0.5
    assert s["per_class"]["c"]["precision"] == pytest.approx(0.5) and s["per_class"]["c"]["recall"] == 1.0
    assert s["log_loss"] is None


def test_absent_class_scores_zero_without_warning():
    s = metrics.evaluate(np.array([0, 0]), np.array([0, 0]), class_names=NAMES)
    assert s["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert np.array(s["confusion_matrix"]).shape == (3, 3)


def test_log_loss_from_probabilities():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    s = metrics.evaluate(np.array([0, 1]), probs.argmax(1), probs, class_names=NAMES)
    assert s["log_loss"] == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)


def test_scores_are_scikit_learns_on_random_predictions():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 10, 500), rng.integers(0, 9, 500)  # class 9 never predicted
    probs = rng.random((500, 10))
    probs[:100, :5] = 0  # exact zeros, as a forest gives: log-loss clips them as scikit-learn does
    probs /= probs.sum(1, keepdims=True)
    s = metrics.evaluate(y_true, y_pred, probs, class_names=tuple("abcdefghij"))
    labels = np.arange(10)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-15)
    assert s["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    got = np.array([[c["precision"], c["recall"], c["f1"], c["support"]] for c in s["per_class"].values()])
    np.testing.assert_allclose(got, np.stack([precision, recall, f1, support], 1), rtol=1e-12)
    macro = skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    assert s["macro_f1"] == pytest.approx(macro, rel=1e-12) and s["macro_f1"] != pytest.approx(np.mean(precision))
    expected = skm.log_loss(y_true, probs, labels=labels)
    assert s["log_loss"] == pytest.approx(expected, rel=1e-12) and np.count_nonzero(probs[np.arange(500), y_true] == 0)


def test_a_cnn_run_never_imports_scikit_learn():
    code = "import sys, fmnist_jax.run, fmnist_jax.training.loop; assert 'sklearn' not in sys.modules, 'sklearn'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shape_errors():
    with pytest.raises(ValueError, match="equal length"):
        metrics.evaluate(np.zeros(3), np.zeros(4), class_names=NAMES)
    with pytest.raises(ValueError, match=r"probs has shape \(2, 2\)"):
        metrics.evaluate(np.zeros(2), np.zeros(2), np.ones((2, 2)), class_names=NAMES)
    with pytest.raises(ValueError, match="not empty"):
        metrics.evaluate(np.zeros(0), np.zeros(0), class_names=NAMES)
    k = len(NAMES)  # a label out of range would be counted in another class's cell
    with pytest.raises(ValueError, match=rf"y_pred holds labels outside 0..{k - 1} \(1 to {k}\)"):
        metrics.evaluate(np.array([1, 2]), np.array([1, k]), class_names=NAMES)
    with pytest.raises(ValueError, match=r"y_true holds labels outside 0..\d+ \(-1 to 1\)"):
        metrics.evaluate(np.array([1, -1]), np.array([1, 1]), class_names=NAMES)


def _results(**extra):
    scores = metrics.evaluate(np.array([0, 1, 2]), np.array([0, 1, 1]), class_names=NAMES)
    test = data.Split(np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 2], np.int32))
    train = data.Split(np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.int32))  # the speed is the test set's
    return metrics.make_results(
        model="m",
        config_name="c",
        scores=scores,
        validation_accuracy=0.5,
        num_params=7,
        train_seconds=1.0,
        predict_seconds=0.5,
        seed=0,
        dataset=data.Dataset(train=train, validation=test, test=test, checksums={"f": "0" * 64}),
        extra=extra,
    )


def test_results_round_trip_with_schema(tmp_path):
    path = metrics.save_results(tmp_path, _results(test_loss=0.1))
    loaded = metrics.load_results(tmp_path)
    assert loaded == json.loads(path.read_text())
    assert set(metrics.REQUIRED_KEYS) <= set(loaded)
    assert loaded["samples_per_second"] == pytest.approx(6.0)  # 3 test images in 0.5 s
    assert loaded["test_accuracy"] == pytest.approx(2 / 3) and loaded["test_loss"] == 0.1
    assert "numpy" in loaded["versions"] and "python" in loaded["versions"]
    assert os.listdir(tmp_path) == ["results.json"]


def test_load_results_errors_name_the_file(tmp_path):
    with pytest.raises(metrics.ResultsError, match=r"results\.json does not exist"):
        metrics.load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(metrics.ResultsError, match=r"results\.json is not valid JSON"):
        metrics.load_results(tmp_path)
    (tmp_path / "results.json").write_text('{"model": "x"}')
    with pytest.raises(metrics.ResultsError, match="lacks the fields"):
        metrics.load_results(tmp_path)


def test_damaged_history_and_predictions_are_errors_naming_the_file(tmp_path):
    """A torn last line is a killed write (skipped); a bad line before it, or unreadable predictions, is damage."""
    (tmp_path / metrics.HISTORY_FILE).write_text('{"epoch": 1}\n{"epoch": 2\n{"epoch": 3}\n')
    with pytest.raises(metrics.ResultsError, match=r"history\.jsonl: line 2 is not valid JSON .*fix or delete that"):
        metrics.read_history(tmp_path)
    (tmp_path / metrics.HISTORY_FILE).write_text('{"epoch": 1}\n{"epoch": 2\n')
    assert metrics.read_history(tmp_path) == [{"epoch": 1}]
    metrics.save_predictions(tmp_path, labels=np.zeros(3, np.int32), preds=np.zeros(3, np.int32))
    path = tmp_path / metrics.PREDICTIONS_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(metrics.ResultsError, match=r"predictions\.npz cannot be read \(BadZipFile: .*mode=evaluate"):
        metrics.load_predictions(tmp_path)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    files.atomic_write_text(path, "old")

    class Boom:
        def encode(self, _):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.atomic_write_text(path, Boom())
    with pytest.raises(TypeError):
        files.atomic_write_bytes(path, "not bytes")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_a_written_file_has_the_permissions_open_would_give_it(tmp_path):
    """Not the 0600 of the temporary file it was written through, nor a fixed mode: the process's umask applied, as
    `open` would (an umask other than the usual 0o022, which is also what `files` assumes where it cannot read it)."""
    with open("/proc/self/status", encoding="ascii") as status:  # where `files` reads the umask without changing it
        if not any(line.startswith("Umask:") for line in status):
            pytest.skip("this kernel's /proc/self/status has no Umask line")
    umask = os.umask(0o027)
    try:
        files.atomic_write_text(tmp_path / "results.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(umask)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("results.json", "plain.json")}
    assert modes == {"results.json": 0o640, "plain.json": 0o640}


def test_a_full_disk_or_an_exceeded_quota_is_told_apart_from_other_errors_however_deep():
    def raised_from(cause):  # an OSError under two other errors, one raised "from" it, one while handling that
        try:
            try:
                try:
                    raise cause
                except OSError as e:
                    raise RuntimeError("the save failed") from e
            except RuntimeError:
                raise ValueError("the run's clean-up failed too")  # noqa: B904  (its __context__ alone)
        except ValueError as e:
            return e

    assert files.is_disk_full(raised_from(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    assert files.is_disk_full(raised_from(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))))  # "Disk quota exceeded"
    assert not files.is_disk_full(raised_from(OSError(errno.EACCES, os.strerror(errno.EACCES))))


def test_a_write_is_synced_with_its_folder_after_the_rename(tmp_path, monkeypatch):
    """The file, then its folder: without the folder's fsync a power loss may undo the rename."""
    synced, fsync = [], os.fsync

    def recorded(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recorded)
    files.atomic_write_text(tmp_path / "results.json", "new")
    assert synced == ["file", "folder"] and os.listdir(tmp_path) == ["results.json"]


def test_predictions_round_trip(tmp_path):
    probs = np.random.default_rng(0).dirichlet(np.ones(3), 5)
    metrics.save_predictions(tmp_path, labels=np.arange(5) % 3, preds=probs.argmax(1), probs=probs)
    loaded = metrics.load_predictions(tmp_path)
    np.testing.assert_array_equal(loaded["preds"], probs.argmax(1))
    np.testing.assert_array_equal(loaded["labels"], np.arange(5) % 3)
    np.testing.assert_allclose(loaded["probs"], probs, rtol=1e-6)


def test_predictions_without_probabilities(tmp_path):
    metrics.save_predictions(tmp_path, labels=np.array([1, 2]), preds=np.array([1, 1]))
    assert sorted(metrics.load_predictions(tmp_path)) == ["labels", "preds"]


def test_predictions_keep_error_and_sample_images(tmp_path):
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    preds = np.array([0, 2, 2, 1, 1, 2, 0])
    images = np.arange(7 * 28 * 28, dtype=np.uint32).reshape(7, 28, 28).astype(np.uint8)
    metrics.save_predictions(tmp_path, labels=labels, preds=preds, images=images, max_errors=1, samples_per_class=2)
    p = metrics.load_predictions(tmp_path)
    assert p["error_indices"].tolist() == [1]
    np.testing.assert_array_equal(p["error_images"], images[[1]])
    assert p["sample_indices"].tolist() == [0, 3, 1, 4, 2, 5]
    np.testing.assert_array_equal(p["sample_images"], images[[0, 3, 1, 4, 2, 5]])
