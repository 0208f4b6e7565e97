"""Fashion-MNIST: reading the IDX files or TFDS, validating them, the seeded train/validation split.

Everything here is NumPy: images stay uint8 (N, 28, 28), labels int32. Scaling to [0, 1] happens on the
device, inside the jitted step, so the host never holds a float copy of the data set.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import pathlib
import socket
import urllib.request
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from fmnist_jax.errors import DataError

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "FMNIST_DATA_DIR"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
# SHA-256 of the released files' IDX content (decompressed: a gzip's bytes depend on its compressor), as in
# github.com/zalandoresearch/fashion-mnist's data/fashion and Debian's dataset-fashion-mnist.
RELEASED_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SOURCES = ("auto", "idx", "tfds")

IDX_WAYS = (
    "(1) on Debian/Ubuntu `sudo apt-get install dataset-fashion-mnist` (files land in "
    f"{DEBIAN_DIR}); "
    "(2) download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist "
    f"(data/fashion) into a folder and pass --config.data.dir=FOLDER or set {ENV_VAR}=FOLDER"
)
HOW_TO_GET_DATA = (
    f"Get Fashion-MNIST one of three ways: {IDX_WAYS}; "
    "(3) --config.data.source=tfds with tensorflow-datasets and internet access."
)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 images (N, 28, 28) and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The three splits plus where they came from: source and folder, the SHA-256 of each IDX file's content (or of
    TFDS's arrays), and whether the IDX files are the data set's released ones (None for TFDS: not compared)."""

    train: Split
    validation: Split
    test: Split
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""
    checksums: Mapping[str, str] = dataclasses.field(default_factory=dict)
    released: bool | None = None


# --------------------------------------------------------------------------------------------- IDX files


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    """The file holding IDX file `stem` in `directory`: gzip or raw, the name with "-idx" or ".idx". Where several
    of these names are there, their contents must agree (a copy unpacked beside its gzip): else which one is
    meant is not known, and a file replaced under one name would be read under the other."""
    names = (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx"))
    paths = [directory / name for name in names if (directory / name).is_file()]
    try:
        digests = {_read_bytes(path)[1] for path in paths} if len(paths) > 1 else set()
    except DataError as e:  # one of several that cannot be read: which one is meant is not known either
        others = ", ".join(p.name for p in paths)
        raise DataError(f"{e} It is one of {len(paths)} versions of {stem} there ({others}): keep one.") from e
    if len(digests) > 1:
        raise DataError(
            f"data folder {directory} holds {len(paths)} versions of {stem} with different contents "
            f"({', '.join(p.name for p in paths)}): keep the one to read and move the others out of the folder."
        )
    return paths[0] if paths else None


def _read_bytes(path: pathlib.Path) -> tuple[bytes, str]:
    """The file's (decompressed) content and its SHA-256: a raw file and its gzip have the same."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}). Check the file's permissions.") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # zlib.error: corrupt deflate data
            raise DataError(f"{path}: the gzip stream is damaged or truncated ({e}). Download the file again.") from e
    return raw, hashlib.sha256(raw).hexdigest()


def _header(path: pathlib.Path, raw: bytes, magic: int, ndim: int) -> tuple[int, ...]:
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{path}: {len(raw)} bytes is shorter than the {header_len}-byte IDX header; "
            "the file is truncated. Download it again."
        )
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(
            f"{path}: magic number {found}, expected {magic} (an IDX {kind} file). "
            "Is this the right file, or is it damaged?"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + math.prod(dims)  # Python ints: a damaged header's dims overflow int64
    if len(raw) != expected:
        raise DataError(
            f"{path}: header says {dims} -> {expected} bytes, the file has {len(raw)} "
            f"({'truncated' if len(raw) < expected else 'trailing data'}). Download it again."
        )
    return dims


def read_idx_images(path: pathlib.Path) -> tuple[np.ndarray, str]:
    """Reads an IDX images file (magic 2051, N x 28 x 28 uint8), gzip or raw; returns (images, its content's
    sha256)."""
    raw, digest = _read_bytes(path)
    n, rows, cols = _header(path, raw, IMAGES_MAGIC, 3)
    if (rows, cols) != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28. This is not Fashion-MNIST.")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols), digest


def read_idx_labels(path: pathlib.Path) -> tuple[np.ndarray, str]:
    """Reads an IDX labels file (magic 2049, N uint8 in 0..9), gzip or raw; returns (labels, its content's
    sha256)."""
    raw, digest = _read_bytes(path)
    _header(path, raw, LABELS_MAGIC, 1)
    labels = np.frombuffer(raw, np.uint8, offset=8)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside 0..9 "
            f"({bad.size} such labels). The file is damaged; download it again."
        )
    return labels.astype(np.int32), digest


def load_idx(directory: str | os.PathLike, named_by: str = "") -> tuple[dict[str, Split], dict[str, str]]:
    """Reads the four IDX files in `directory` (which `named_by` names, for errors: "config.data.dir", ENV_VAR):
    ({"train": Split, "test": Split}, {IDX name (without .gz): its content's sha256})."""
    directory = pathlib.Path(directory).expanduser()
    if not directory.is_dir():
        by = f" (named by {named_by})" if named_by else ""
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise DataError(f"data folder {directory}{by} {what}. {HOW_TO_GET_DATA}")
    found = {stem: _find(directory, stem) for pair in IDX_FILES.values() for stem in pair}
    if missing := [stem for stem, path in found.items() if path is None]:
        folders = [str(directory / n) for m in missing for n in (m, m + ".gz") if (directory / n).is_dir()]
        if folders:  # a name present, as a folder
            raise DataError(f"{', '.join(folders)}: a folder where the IDX file should be. {HOW_TO_GET_DATA}")
        raise DataError(f"data folder {directory} lacks {', '.join(m + '[.gz]' for m in missing)}. {HOW_TO_GET_DATA}")
    splits, checksums = {}, {}
    for split, stems in IDX_FILES.items():
        paths = [found[stem] for stem in stems]
        images, images_sha = read_idx_images(paths[0])
        labels, labels_sha = read_idx_labels(paths[1])
        if len(images) != len(labels):
            raise DataError(
                f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} "
                "labels; they must agree. One of the files is from another data set."
            )
        if not len(images):
            raise DataError(f"{paths[0]} holds no images: the {split} split would be empty. Download it again.")
        checksums[stems[0]], checksums[stems[1]] = images_sha, labels_sha
        splits[split] = Split(images, labels)
    return splits, checksums


# --------------------------------------------------------------------------------------------- TFDS


def load_tfds(data_dir: str | None = None) -> tuple[dict[str, Split], dict[str, str]]:
    """Reads `fashion_mnist` through `tfds.data_source` (TensorFlow-free reading; TFDS downloads if needed)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            "data.source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets. " + HOW_TO_GET_DATA
        ) from e
    splits = {}
    for split in IDX_FILES:
        try:
            source = tfds.data_source("fashion_mnist", split=split, data_dir=data_dir)
            records = [source[i] for i in range(len(source))]
        except Exception as e:  # TFDS raises many types (network, missing TensorFlow for preparing, ...)
            raise DataError(
                f"TFDS could not provide fashion_mnist/{split}: {type(e).__name__}: {e}. Its first preparation "
                "needs internet access and TensorFlow (pip install tensorflow-cpu); or read the IDX files, got one "
                f"of two ways: {IDX_WAYS}."
            ) from e
        if not records:
            raise DataError(f"TFDS fashion_mnist/{split} holds no images: its prepared data is damaged.")
        images = np.stack([np.asarray(r["image"], np.uint8).reshape(IMAGE_SHAPE) for r in records])
        labels = np.asarray([int(r["label"]) for r in records], np.int32)
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DataError(f"TFDS fashion_mnist/{split}: labels outside 0..9; the prepared data is damaged.")
        splits[split] = Split(images, labels)
    return splits, {"tfds:fashion_mnist": _array_digest(splits)}


# Where TFDS fetches Fashion-MNIST from: its Cloud Storage mirror, then the data set's own host.
TFDS_HOSTS = (("storage.googleapis.com", 443), ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80))


def _tfds_folder(data_dir: str | None = None) -> pathlib.Path:
    """TFDS's folder: `data_dir`, else TFDS_DATA_DIR, else ~/tensorflow_datasets (as TFDS picks it)."""
    return pathlib.Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _tfds_could_provide(data_dir: str | None = None, timeout: float = 3.0) -> bool:
    """Whether TFDS may provide Fashion-MNIST now: a copy it prepared before (in `data_dir`, TFDS's folder), a proxy
    (which this cannot judge), or one of its hosts answering. Offline, TFDS retries its downloads for minutes."""
    prepared = _tfds_folder(data_dir) / "fashion_mnist"
    proxies = urllib.request.getproxies()  # the environment's (and the system's) proxies
    proxied = (proxies.get("https") or proxies.get("all")) and not all(
        urllib.request.proxy_bypass(host) for host, _ in TFDS_HOSTS
    )
    if any(prepared.glob("*/dataset_info.json")) or proxied:
        return True
    for host in TFDS_HOSTS:
        try:
            socket.create_connection(host, timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def _array_digest(splits: Mapping[str, Split]) -> str:
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(splits[name].images.tobytes())
        h.update(splits[name].labels.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- load


def _idx_candidates(data_dir: str | None) -> list[tuple[str, str]]:
    found = []
    if data_dir:
        found.append(("config.data.dir", data_dir))
    if os.environ.get(ENV_VAR):
        found.append((ENV_VAR, os.environ[ENV_VAR]))
    found.append(("Debian dataset-fashion-mnist", DEBIAN_DIR))
    return found


def split_train_validation(
    train: Split, *, validation_size: int, num_train: int | None, seed: int
) -> tuple[Split, Split]:
    """Holds out `validation_size` images by a permutation seeded with `seed`; keeps `num_train` of the rest."""
    n = len(train)
    if not 0 <= validation_size < n:
        raise DataError(
            f"config.data.validation_size={validation_size} must be in [0, {n - 1}] "
            f"(the training file holds {n} images)."
        )
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:validation_size], order[validation_size:]
    if num_train is not None:
        if not 0 < num_train <= len(train_idx):
            raise DataError(
                f"config.data.num_train={num_train} must be in [1, {len(train_idx)}] "
                f"(or None for all) with validation_size={validation_size}."
            )
        train_idx = train_idx[:num_train]
    return Split(train.images[train_idx], train.labels[train_idx]), Split(train.images[val_idx], train.labels[val_idx])


def load(config: Any, *, seed: int) -> Dataset:
    """Loads the data set that `config` (the `config.data` section) names and splits it with `seed`."""
    source = config.source
    if source not in SOURCES:
        raise DataError(f"config.data.source={source!r} is not one of {SOURCES}.")
    data_dir = config.dir or None
    origin, released = "", None
    if source == "tfds":  # config.data.dir, when set, is TFDS's own folder
        if not _tfds_could_provide(data_dir):
            where = f"in {data_dir}" if data_dir else f"in TFDS's folder, {_tfds_folder()}"
            raise DataError(
                f"config.data.source='tfds': TFDS has no prepared fashion_mnist {where} and cannot download one "
                "(offline). Prepare it where there is internet access, or read the IDX files "
                f"(--config.data.source=auto, config.data.dir their folder or unset), got one of two ways: {IDX_WAYS}."
            )
        raw, checksums = load_tfds(data_dir)
        origin = "tfds"
    else:
        candidates = _idx_candidates(data_dir)
        if source == "auto":
            # An explicitly named folder must work; the defaults are tried in turn, then TFDS.
            explicit = [c for c in candidates if c[0] != "Debian dataset-fashion-mnist"]
            candidates = explicit[:1] or [c for c in candidates if pathlib.Path(c[1]).is_dir()][:1]
        if not candidates:
            nowhere = f"no Fashion-MNIST found: not in {DEBIAN_DIR}, {ENV_VAR} unset, config.data.dir unset, and"
            if not _tfds_could_provide():
                raise DataError(f"{nowhere} TFDS has no copy and cannot download one (offline). {HOW_TO_GET_DATA}")
            try:
                raw, checksums = load_tfds(None)
                origin = "tfds"
            except DataError as e:
                cause = e.__cause__ or e
                why = " ".join(f"{type(cause).__name__}: {cause}".split())
                raise DataError(f"{nowhere} TFDS failed ({why[:300]}). {HOW_TO_GET_DATA}") from e
        else:
            named_by = "" if candidates[0][1] == DEBIAN_DIR else candidates[0][0]
            raw, checksums = load_idx(candidates[0][1], named_by=named_by)
            folder = pathlib.Path(candidates[0][1]).expanduser().resolve()
            origin, released = f"idx:{folder}", _released(folder, checksums)
    train, validation = split_train_validation(
        raw["train"], validation_size=config.validation_size, num_train=config.num_train, seed=seed
    )
    return Dataset(
        train=train,
        validation=validation,
        test=raw["test"],
        source=origin,
        checksums=dict(checksums),
        released=released,
    )


def _released(folder: pathlib.Path, checksums: Mapping[str, str]) -> bool:
    """Whether the IDX files read from `folder` hold Fashion-MNIST's released content; a warning names those that do
    not (another data set in the same format, or files changed: scores of other data)."""
    other = [name for name, digest in RELEASED_SHA256.items() if checksums.get(name) != digest]
    if other:
        one = len(other) == 1
        names = f"{', '.join(other[:-1])} and {other[-1]}" if len(other) > 1 else other[0]
        names = "all four IDX files" if len(other) == len(RELEASED_SHA256) else names
        logging.warning(
            "%s: %s %s from Fashion-MNIST's released file%s (by %s content's SHA-256): scores on this data are not "
            "comparable with the study's or this project's.",
            folder,
            names,
            "differs" if one else "differ",
            "" if one else "s",
            "its" if one else "their",
        )
    return not other
