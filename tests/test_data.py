"""data.py: the IDX reader's checks, the source order, the seeded split, the TFDS path."""

import gzip
import hashlib
import pathlib
import re

import ml_collections
import numpy as np
import pytest
from helpers import bar_classes, idx_arrays, idx_bytes, write_idx_dataset

from fmnist_jax import checksums, data
from fmnist_jax.errors import DataError


def data_config(**fields) -> ml_collections.ConfigDict:
    base = {"source": "auto", "dir": None, "validation_size": 20, "num_train": None}
    return ml_collections.ConfigDict({**base, **fields})


@pytest.mark.parametrize("compress", [True, False])
def test_reads_gzip_and_raw_files_with_checksums_of_their_content(tmp_path, compress):
    folder = write_idx_dataset(tmp_path, n_train=50, n_test=30, compress=compress)
    splits, checksums = data.load_idx(folder)
    assert splits["train"].images.shape == (50, 28, 28) and splits["train"].images.dtype == np.uint8
    assert splits["test"].labels.shape == (30,) and splits["test"].labels.dtype == np.int32
    for split, (images, labels) in idx_arrays(n_train=50, n_test=30).items():  # the arrays written, exactly
        np.testing.assert_array_equal(splits[split].images, images)
        np.testing.assert_array_equal(splits[split].labels, labels)
    assert sorted(checksums) == sorted(data.RELEASED_SHA256)  # by IDX name, without .gz
    for name, digest in checksums.items():
        stored = (folder / (name + ".gz" if compress else name)).read_bytes()
        assert digest == hashlib.sha256(gzip.decompress(stored) if compress else stored).hexdigest()


def test_gzip_and_raw_hold_the_same_arrays_and_checksums(tmp_path):
    a, a_sums = data.load_idx(write_idx_dataset(tmp_path / "a", n_train=40, n_test=10, compress=True))
    b, b_sums = data.load_idx(write_idx_dataset(tmp_path / "b", n_train=40, n_test=10, compress=False))
    np.testing.assert_array_equal(a["train"].images, b["train"].images)
    np.testing.assert_array_equal(a["test"].labels, b["test"].labels)
    assert a_sums == b_sums


def test_a_file_unpacked_beside_its_gzip_is_read_only_where_both_hold_the_same(tmp_path, monkeypatch):
    """`gunzip -k` leaves both names: the same content is read as one file; a raw file that another replaced
    beside its gzip, or one that cannot be read, is refused, both named, where either one could have been meant."""
    folder = write_idx_dataset(tmp_path, n_train=40, n_test=10, compress=True)
    before, before_sums = data.load_idx(folder)
    name = "train-images-idx3-ubyte"
    (folder / name).write_bytes(gzip.decompress((folder / (name + ".gz")).read_bytes()))
    after, after_sums = data.load_idx(folder)
    np.testing.assert_array_equal(after["train"].images, before["train"].images)
    assert after_sums == before_sums
    other = idx_arrays(n_train=40, n_test=10, seed=1)["train"][0]
    (folder / name).write_bytes(idx_bytes(other, 2051))
    with pytest.raises(DataError) as e:
        data.load_idx(folder)
    assert str(e.value) == (
        f"data folder {folder} holds 2 versions of {name} with different contents ({name}.gz, {name}): keep the one "
        "to read and move the others out of the folder."
    )
    unreadable, read_bytes = folder / name, pathlib.Path.read_bytes

    def refusing(path):
        if path == unreadable:
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refusing)
    with pytest.raises(DataError) as e:
        data.load_idx(folder)
    assert str(e.value) == (
        f"{unreadable}: cannot read (Permission denied). Check the file's permissions. It is one of 2 versions of "
        f"{name} there ({name}.gz, {name}): keep one."
    )


def test_files_other_than_the_released_ones_are_named_in_a_warning(tmp_path, monkeypatch, caplog):
    """Generated files are not Fashion-MNIST's released ones: `released` is False, and a warning says so; with the
    recorded digests those of three of the files, it names the fourth alone; with all four, `released` is True and
    nothing is said."""
    folder = write_idx_dataset(tmp_path / "other", n_train=40, n_test=10)
    config = data_config(dir=str(folder), validation_size=10)
    with caplog.at_level("WARNING"):
        first = data.load(config, seed=0)
    assert first.released is False
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder.resolve()}: all four IDX files differ from Fashion-MNIST's released files (by their content's "
        "SHA-256): scores on this data are not comparable with the study's or this project's."
    ]
    caplog.clear()
    sums = dict(first.checksums)
    monkeypatch.setattr(data, "RELEASED_SHA256", {**sums, "t10k-labels-idx1-ubyte": "0" * 64})
    with caplog.at_level("WARNING"):
        assert data.load(config, seed=0).released is False
    assert [r.getMessage().split(": ")[1] for r in caplog.records] == [
        "t10k-labels-idx1-ubyte differs from Fashion-MNIST's released file (by its content's SHA-256)"
    ]
    caplog.clear()
    monkeypatch.setattr(data, "RELEASED_SHA256", sums)
    with caplog.at_level("WARNING"):
        assert data.load(config, seed=0).released is True
    assert not caplog.records


def _rewrite(folder, name, content):
    (folder / (name + ".gz")).write_bytes(gzip.compress(content))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("truncated", r"train-images-idx3-ubyte.gz: header says \(40, 28, 28\) -> 31376 bytes, the file has 31000"),
        ("wrong_magic", r"train-images-idx3-ubyte.gz: magic number 2049, expected 2051"),
        ("wrong_shape", r"images are 32x32, expected 28x28"),
        ("label_range", r"train-labels-idx1-ubyte.gz: label 12 at index 3 is outside 0..9"),
        ("label_ten", r"train-labels-idx1-ubyte.gz: label 10 at index 3 is outside 0..9 \(1 such labels\)"),
        (
            "trailing",
            r"train-images-idx3-ubyte.gz: header says \(40, 28, 28\) -> 31376 bytes, the file has 31381 "
            r"\(trailing data\)",
        ),
        ("count_mismatch", r"holds 40 images but .*train-labels-idx1-ubyte.gz holds 39 labels"),
        ("bad_gzip", r"train-images-idx3-ubyte.gz: the gzip stream is damaged or truncated"),
        ("corrupt_deflate", r"train-images-idx3-ubyte.gz: the gzip stream is damaged or truncated .*invalid block"),
        ("short_header", r"shorter than the 16-byte IDX header"),
        ("empty_test", r"t10k-images-idx3-ubyte.gz holds no images: the test split would be empty"),
        ("huge_header", r"header says \(4294967295, 4294967295, 4294967295\) -> 79228162458924105385300197391 bytes"),
    ],
)
def test_malformed_files_raise_clear_errors(tmp_path, case, expected):
    folder = write_idx_dataset(tmp_path, n_train=40, n_test=10)
    images = np.zeros((40, 28, 28), np.uint8)
    labels = np.arange(40, dtype=np.uint8) % 10
    if case == "truncated":
        _rewrite(folder, "train-images-idx3-ubyte", idx_bytes(images, 2051)[:31000])
    elif case == "wrong_magic":
        _rewrite(folder, "train-images-idx3-ubyte", idx_bytes(images, 2049))
    elif case == "wrong_shape":
        _rewrite(folder, "train-images-idx3-ubyte", idx_bytes(np.zeros((40, 32, 32), np.uint8), 2051))
    elif case == "label_range":
        labels[3] = 12
        _rewrite(folder, "train-labels-idx1-ubyte", idx_bytes(labels, 2049))
    elif case == "label_ten":  # one past the last class
        labels[3] = 10
        _rewrite(folder, "train-labels-idx1-ubyte", idx_bytes(labels, 2049))
    elif case == "trailing":
        _rewrite(folder, "train-images-idx3-ubyte", idx_bytes(images, 2051) + b"\x00" * 5)
    elif case == "count_mismatch":
        _rewrite(folder, "train-labels-idx1-ubyte", idx_bytes(labels[:39], 2049))
    elif case == "bad_gzip":
        path = folder / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:200])
    elif case == "corrupt_deflate":  # zlib.error, not OSError: bytes after the 10-byte gzip header overwritten
        path = folder / "train-images-idx3-ubyte.gz"
        raw = path.read_bytes()
        path.write_bytes(raw[:10] + b"\xff" * 8 + raw[18:])
    elif case == "short_header":
        _rewrite(folder, "train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00")
    elif case == "empty_test":
        _rewrite(folder, "t10k-images-idx3-ubyte", idx_bytes(np.zeros((0, 28, 28), np.uint8), 2051))
        _rewrite(folder, "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(0, np.uint8), 2049))
    elif case == "huge_header":  # dims whose product overflows int64
        _rewrite(folder, "train-images-idx3-ubyte", (2051).to_bytes(4, "big") + b"\xff" * 12)
    with pytest.raises(data.DataError, match=expected):
        data.load_idx(folder)


def test_missing_file_names_it_and_the_ways_to_get_data(tmp_path):
    folder = write_idx_dataset(tmp_path, n_train=10, n_test=10)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        data.DataError,
        match=r"lacks t10k-labels-idx1-ubyte\[.gz\].*apt-get install "
        r"dataset-fashion-mnist.*FMNIST_DATA_DIR.*tfds",
    ):
        data.load_idx(folder)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (folder / name).unlink()
    with pytest.raises(
        data.DataError, match=r"lacks train-images-idx3-ubyte\[.gz\], t10k-images-idx3-ubyte\[.gz\], t10k"
    ):
        data.load_idx(folder)  # every missing file named at once


def test_missing_folder_lists_three_ways(tmp_path):
    with pytest.raises(data.DataError, match=r"does not exist.*\(1\).*\(2\).*\(3\)"):
        data.load(data_config(dir=str(tmp_path / "nowhere")), seed=0)
    (tmp_path / "afile").write_text("")
    with pytest.raises(
        data.DataError, match=r"afile \(named by config.data.dir\) is a file, not a folder\. .*\(1\).*\(2\).*\(3\)"
    ):
        data.load(data_config(dir=str(tmp_path / "afile")), seed=0)


def test_split_is_seeded_disjoint_and_sized(tmp_path):
    folder = write_idx_dataset(tmp_path, n_train=100, n_test=10)
    a = data.load(data_config(dir=str(folder), validation_size=30), seed=3)
    b = data.load(data_config(dir=str(folder), validation_size=30), seed=3)
    c = data.load(data_config(dir=str(folder), validation_size=30), seed=4)
    assert (len(a.train), len(a.validation), len(a.test)) == (70, 30, 10)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert not np.array_equal(a.validation.images, c.validation.images)
    # Together the two parts are exactly the original 100 images, each once.
    raw, _ = data.load_idx(folder)
    both = np.concatenate([a.train.images, a.validation.images]).reshape(100, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, raw["train"].images.reshape(100, -1)))
    for part in (a.train, a.validation, c.train, c.validation, a.test):  # each image keeps its own label
        np.testing.assert_array_equal(bar_classes(part.images), part.labels)


def test_num_train_limits_training_images_only(tmp_path):
    folder = write_idx_dataset(tmp_path, n_train=100, n_test=10)
    full = data.load(data_config(dir=str(folder), validation_size=30), seed=0)
    few = data.load(data_config(dir=str(folder), validation_size=30, num_train=25), seed=0)
    assert len(few.train) == 25 and len(few.validation) == 30
    np.testing.assert_array_equal(few.train.images, full.train.images[:25])
    np.testing.assert_array_equal(few.validation.images, full.validation.images)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"validation_size": 100}, r"config.data.validation_size=100 must be in \[0, 99\]"),
        ({"num_train": 0}, r"config.data.num_train=0 must be in \[1, 80\]"),
        ({"source": "web"}, r"config.data.source='web' is not one of"),
    ],
)
def test_bad_data_fields_name_the_field(tmp_path, fields, match):
    folder = write_idx_dataset(tmp_path, n_train=100, n_test=10)
    with pytest.raises(data.DataError, match=match):
        data.load(data_config(dir=str(folder), **fields), seed=0)


def test_source_order_config_dir_then_environment(tmp_path, monkeypatch):
    env_dir = write_idx_dataset(tmp_path / "env", n_train=40, n_test=10, seed=1)
    cfg_dir = write_idx_dataset(tmp_path / "cfg", n_train=50, n_test=10, seed=2)
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    from_config = data.load(data_config(dir=str(cfg_dir)), seed=0)
    from_env = data.load(data_config(), seed=0)
    assert len(from_config.train) + len(from_config.validation) == 50
    assert len(from_env.train) + len(from_env.validation) == 40
    assert from_env.source == f"idx:{env_dir.resolve()}"


def test_forced_idx_with_bad_environment_folder_fails(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(data.DataError, match="missing \\(named by FMNIST_DATA_DIR\\) does not exist"):
        data.load(data_config(source="idx"), seed=0)
    # Neither set: Debian's folder, which no setting names.
    monkeypatch.delenv(data.ENV_VAR)
    monkeypatch.setattr(data, "DEBIAN_DIR", str(tmp_path / "debian"))
    with pytest.raises(
        data.DataError, match=f"^data folder {re.escape(str(tmp_path / 'debian'))} does not exist\\. Get"
    ):
        data.load(data_config(source="idx"), seed=0)


def test_tfds_source_through_mock_data(monkeypatch):
    import tensorflow_datasets as tfds  # a requirement: never skipped

    monkeypatch.setattr(data, "_tfds_could_provide", lambda data_dir: True)  # the mock stands in for TFDS's copy
    with tfds.testing.mock_data(num_examples=40):
        dataset = data.load(data_config(source="tfds", validation_size=10), seed=0)
    assert dataset.source == "tfds"
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (30, 10, 40)
    assert dataset.train.images.shape == (30, 28, 28) and dataset.train.images.dtype == np.uint8
    assert dataset.train.labels.dtype == np.int32 and dataset.train.labels.max() < 10
    assert list(dataset.checksums) == ["tfds:fashion_mnist"] and dataset.released is None  # TFDS's: not compared
    with tfds.testing.mock_data(num_examples=0), pytest.raises(DataError, match=r"^TFDS fashion_mnist/train holds no"):
        data.load(data_config(source="tfds", validation_size=10), seed=0)
    # A label past the last class (10) is damaged data, not an 11th class.
    records = [{"image": np.zeros((28, 28, 1), np.uint8), "label": label} for label in (0, 9, 10)]
    monkeypatch.setattr(tfds, "data_source", lambda name, split, data_dir: records)
    with pytest.raises(DataError, match=r"^TFDS fashion_mnist/train: labels outside 0\.\.9"):
        data.load(data_config(source="tfds", validation_size=1), seed=0)


def test_auto_uses_first_available_without_explicit_dirs(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    folder = write_idx_dataset(tmp_path / "debian", n_train=30, n_test=10)
    monkeypatch.setattr(data, "DEBIAN_DIR", str(folder))
    dataset = data.load(data_config(validation_size=5), seed=0)
    assert dataset.source == f"idx:{folder.resolve()}" and len(dataset.train) == 25


def test_auto_with_no_data_anywhere_and_no_network_fails_at_once_saying_how_to_get_it(tmp_path, monkeypatch):
    """Offline, TFDS would retry its downloads for minutes: `auto` finds that out in seconds and says so once."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data.urllib.request, "getproxies", dict)  # no proxy
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data, "DEBIAN_DIR", str(tmp_path / "none"))
    tried = []

    def unreachable(address, timeout):
        tried.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data.socket, "create_connection", unreachable)
    with pytest.raises(DataError) as failed:
        data.load(data_config(validation_size=10), seed=0)
    message = str(failed.value)
    assert message.startswith(f"no Fashion-MNIST found: not in {tmp_path / 'none'}, FMNIST_DATA_DIR unset")
    assert "TFDS has no copy and cannot download one (offline)" in message and message.count("(1) on Debian") == 1
    assert tried == list(data.TFDS_HOSTS)
    with pytest.raises(DataError) as failed:  # TFDS asked for: the way out is the IDX files, not TFDS again
        data.load(data_config(validation_size=10, source="tfds"), seed=0)
    message = str(failed.value)
    assert "(offline). Prepare it where there is internet access, or read the IDX files" in message
    assert "--config.data.source=tfds" not in message and message.count("(1) on Debian") == 1
    del tried[len(data.TFDS_HOSTS) :]  # the counts below are of the first probe and any after this point
    (tmp_path / "tfds" / "fashion_mnist" / "3.0.1").mkdir(parents=True)  # a copy TFDS prepared before: tried
    (tmp_path / "tfds" / "fashion_mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert data._tfds_could_provide() and len(tried) == 2
    (tmp_path / "tfds" / "fashion_mnist" / "3.0.1" / "dataset_info.json").unlink()
    monkeypatch.setattr(data.urllib.request, "getproxies", lambda: {"all": "socks5://proxy:1080"})
    assert data._tfds_could_provide() and len(tried) == 2  # a proxy: TFDS may get through, not judged here
    import tensorflow_datasets as tfds  # a requirement: never skipped

    def offline(name, split, data_dir=None):
        raise ConnectionError(f"cannot download {name}")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(DataError) as failed:
        data.load(data_config(validation_size=10), seed=0)
    message = str(failed.value)
    assert "TFDS failed (ConnectionError: cannot download fashion_mnist). Get Fashion-MNIST" in message
    assert message.count("(1) on Debian") == 1  # the ways to get the data said once


@pytest.mark.slow
def test_real_data_files(real_data_dir):
    dataset = data.load(data_config(dir=str(real_data_dir), validation_size=12000), seed=0)
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (48000, 12000, 10000)
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10
    assert np.bincount(np.concatenate([dataset.train.labels, dataset.validation.labels])).tolist() == [6000] * 10
    assert dataset.checksums == data.RELEASED_SHA256 and dataset.released is True

    # The arrays against the files read by hand (headers: 16 bytes for images, 8 for labels), each image with its label.
    def read(name, header):
        return np.frombuffer(gzip.decompress((real_data_dir / f"{name}.gz").read_bytes()), np.uint8, offset=header)

    np.testing.assert_array_equal(dataset.test.images.reshape(-1), read("t10k-images-idx3-ubyte", 16))
    np.testing.assert_array_equal(dataset.test.labels, read("t10k-labels-idx1-ubyte", 8))

    def pairs(images, labels):
        return sorted(bytes(image) + bytes([label]) for image, label in zip(images, labels, strict=True))

    held = np.concatenate([dataset.train.images, dataset.validation.images]).reshape(60000, 784)
    raw = read("train-images-idx3-ubyte", 16).reshape(60000, 784), read("train-labels-idx1-ubyte", 8)
    held_labels = np.concatenate([dataset.train.labels, dataset.validation.labels])
    assert pairs(held, held_labels) == pairs(*raw)


def test_forced_tfds_offline_without_a_copy_stops_at_once(tmp_path, monkeypatch):
    """TFDS would retry its downloads for minutes (and write its folders into data.dir): the source forced, the
    offline check runs first, on the folder data.dir names for TFDS."""
    monkeypatch.setattr(data.urllib.request, "getproxies", dict)

    def unreachable(address, timeout):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data.socket, "create_connection", unreachable)
    with pytest.raises(DataError, match=rf"TFDS has no prepared fashion_mnist in {tmp_path} and cannot download"):
        data.load(data_config(source="tfds", dir=str(tmp_path)), seed=0)
    assert not any(tmp_path.iterdir())  # nothing written there
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # no data.dir: TFDS's own folder, named
    with pytest.raises(DataError, match=rf"no prepared fashion_mnist in TFDS's folder, {tmp_path}/tfds and cannot"):
        data.load(data_config(source="tfds"), seed=0)


def test_a_tfds_failure_says_what_its_preparation_needs_and_the_other_sources(monkeypatch):
    """TFDS failing (here: no network for its first preparation) names the split and the error, what the
    preparation needs, and the IDX ways; not the TFDS way just tried."""
    import tensorflow_datasets as tfds  # a requirement: never skipped

    monkeypatch.setattr(data, "_tfds_could_provide", lambda data_dir: True)  # it could, then fails

    def offline(name, split, data_dir=None):
        raise ConnectionError(f"cannot download {name}")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(DataError) as failed:
        data.load(data_config(source="tfds", validation_size=10), seed=0)
    message = str(failed.value)
    assert message.startswith("TFDS could not provide fashion_mnist/train: ConnectionError: cannot download fashion")
    assert "needs internet access and TensorFlow" in message and "dataset-fashion-mnist" in message
    assert "source=tfds" not in message


def test_tfds_preparation_finds_what_it_imports():
    """TFDS's dataset builder imports importlib_resources for a first preparation but declares it only for Python
    below 3.9: a requirement of ours. Without it the preparation fails before any download (ModuleNotFoundError)."""
    import tensorflow_datasets as tfds  # a requirement: never skipped

    builder = tfds.builder("fashion_mnist", data_dir="/nonexistent-tfds-dir")
    assert builder.code_path.suffix == ".py" and builder.code_path.exists()


def test_older_records_of_the_data_compare_by_content_and_test_images_are_told_apart_by_their_files():
    """Records before content's checksums named each file as found: a gzip file's sum (of its bytes as stored) is
    never set against content's, a raw file's dotted name is its stem's. Test images differ where a test file's
    content, TFDS's digest (of every split) or the source does; training files alone do not."""
    now = dict(data.RELEASED_SHA256)
    gzip_record = {f"{name}.gz": "0" * 64 for name in now}
    dotted = {name.replace("-idx", ".idx"): digest for name, digest in now.items()}
    assert checksums.by_content(gzip_record) == {} and checksums.by_content(dotted) == now
    assert checksums.differing(gzip_record, now) == [] and checksums.other_source(gzip_record, now) is None
    assert checksums.differing(dotted, now) == [] and checksums.what_differs(dotted, now) is None
    dotted_other = {**dotted, "t10k-images.idx3-ubyte": "1" * 64}  # either side read by content, in either place
    assert (
        checksums.differing(dotted_other, now) == checksums.differing(now, dotted_other) == ["t10k-images-idx3-ubyte"]
    )
    assert checksums.other_test_images(dotted_other, now) == "t10k-images-idx3-ubyte differ, by content's SHA-256"
    other_train = {**now, "train-labels-idx1-ubyte": "0" * 64}
    assert checksums.what_differs(other_train, now) == "train-labels-idx1-ubyte differ, by content's SHA-256"
    assert checksums.other_test_images(other_train, now) is None
    other_test = {**now, "t10k-labels-idx1-ubyte": "0" * 64}
    assert checksums.other_test_images(now, other_test) == "t10k-labels-idx1-ubyte differ, by content's SHA-256"
    tfds_a, tfds_b = {"tfds:fashion_mnist": "a" * 64}, {"tfds:fashion_mnist": "b" * 64}
    assert checksums.other_test_images(tfds_a, tfds_b).startswith("TFDS's arrays differ, by their SHA-256: one digest")
    assert checksums.what_differs(tfds_a, tfds_b) == "TFDS's arrays differ, by their SHA-256: one digest of every split"
    assert checksums.other_test_images(tfds_a, now) == (
        "read from tfds and from idx, whose test images come in other orders"
    )
    assert checksums.other_test_images(None, now) is None and checksums.other_test_images(gzip_record, now) is None
    # An older record of gzip files read IDX files all the same: against TFDS's arrays, another source.
    assert checksums.other_source(gzip_record, tfds_a).startswith("it read them as t10k-images-idx3-ubyte.gz and")
    assert checksums.other_test_images(gzip_record, tfds_a) == (
        "read from idx and from tfds, whose test images come in other orders"
    )
