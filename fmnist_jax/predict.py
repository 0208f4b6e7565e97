"""Classifying the user's own images: reading them as Fashion-MNIST-like 28x28 uint8, and reporting.

Fashion-MNIST shows light garments on a black background, each trimmed to the garment, whose longer side fills the
28 pixels. A photo is usually the reverse, so an image whose garment (what stands out from the border's grey) is
darker than its background is inverted; then its background is taken down to black, it is cropped to what stands out
(a margin of background would shrink the garment), fitted into 28x28 keeping its aspect ratio and stretched so that
its lightest pixel is white. A 28x28 image is taken as it is, but for the inversion; an .npy array as it is.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import pathlib
import warnings
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from fmnist_jax import config_lib, files, metrics
from fmnist_jax.data import CLASS_NAMES, IMAGE_SHAPE
from fmnist_jax.errors import PredictError

OUTPUT_FILE = "predict.json"
PREDICTION_FIELDS = ("input", "class", "name", "probability")  # a row of it, per image
# What a run keeps in its workdir (at its top level, and folders by their names' start): never where predictions go.
RUN_FILES = (
    *(config_lib.CONFIG_FILE, config_lib.CHECKPOINTS_DIR, config_lib.EVENTS_DIR),
    *(config_lib.MODEL_FILE, config_lib.FIT_FILE),
    *(metrics.RESULTS_FILE, metrics.HISTORY_FILE, metrics.PREDICTIONS_FILE),
)
RUN_PREFIXES = (f"{config_lib.CHECKPOINTS_DIR}_", "evaluate_step_")  # checkpoints set aside, scorings apart
NAME_LIMIT = 4096  # the longest path a name holding commas is looked for as (Linux's PATH_MAX)
UNIT_ROUNDING = 1e-3  # floats up to 1 + this are 0-1 values rounded past 1: clipped to 1
LARGE_IMAGE_PIXELS = 50_000_000  # PIL warns from 89 million pixels (and refuses from twice that): said in our words
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def parse_inputs(inputs: str | Sequence[str]) -> list[pathlib.Path]:
    """`config.predict.inputs`: comma-separated paths (or a list), each a file or a pattern with `*` or `?`
    (`photos/*.jpg`, quoted from the shell; `[` is taken as it is) that must match at least one, its matches in
    sorted order. A file whose name holds a comma is named as such, not as two missing files."""
    split = isinstance(inputs, str)  # a list's items are whole names, commas and all
    raw = inputs.split(",") if split else [str(p) for p in inputs]
    paths = []
    for i, piece in enumerate(raw):
        item = piece.strip()
        path = pathlib.Path(item).expanduser()
        if not item or os.path.exists(path):  # os.path's: False for a name too long to be one
            paths.extend([path] if item else [])
            continue
        joined = (",".join(raw[i:j]).strip() for j in range(i + 2, len(raw) + 1) if split)  # with its commas
        names = itertools.takewhile(lambda name: len(name) <= NAME_LIMIT, joined)
        if whole := next((name for name in names if os.path.exists(os.path.expanduser(name))), None):
            raise PredictError(
                f"config.predict.inputs: {whole} holds a comma, which separates the inputs; give the file a name "
                "without one (or a link to it)."
            )
        if "*" in item or "?" in item:
            pattern = glob.escape(str(path)).replace("[*]", "*").replace("[?]", "?")
            if not (matches := sorted(glob.glob(pattern))):
                raise PredictError(f"config.predict.inputs: {item} matches no file.")
            paths.extend(pathlib.Path(m) for m in matches)
        else:
            paths.append(path)  # missing: named with the rest by `load_images`
    if not paths:
        raise PredictError(
            "config.predict.inputs is empty: give image or .npy paths, comma-separated, e.g. "
            "--config.predict.inputs=shirt.png,boot.jpg"
        )
    return paths


def inputs_and_output(
    config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> tuple[np.ndarray, list[str], pathlib.Path]:
    """The images to predict, their names and where the predictions go, checked before the model loads."""
    inputs = parse_inputs(config.predict.inputs)
    output = output_path(config.predict.output, workdir, inputs=inputs)
    return *load_images(inputs), output


# How far from the border's grey a pixel must be to count as the garment (for the crop, that share of the farthest
# pixel's distance: a photo on grey has less contrast than one on white; nor within the background's own variation,
# NOISE_SIGMAS times the border's spread; nor under the floor), and the share of the image such pixels must make up
# (fewer are specks of dust, or a garment too faint to find: no crop).
OBJECT_CONTRAST, OBJECT_CONTRAST_FLOOR, NOISE_SIGMAS = 32, 8, 5
OBJECT_MIN_SHARE = 0.005


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


# A backdrop's light, fitted to the border in BACKDROP_FITS rounds, each leaving out the border's 1 - BACKDROP_SHARE
# farthest on the garment's side (garment may reach the border); the last round keeps every pixel within
# BACKDROP_SIGMAS robust deviations, and at least BACKDROP_SHARE of the border must be such backdrop.
BACKDROP_SIGMAS, BACKDROP_FITS, BACKDROP_SHARE = 4, 8, 0.6


def _even_light(image: np.ndarray) -> np.ndarray:
    """`image` with the uneven light on its backdrop evened out: a vignette (corners darker than the middle, as a lens
    or a lamp gives) or light falling off to one side. The light is fitted to the border as a plane plus a round
    fall-off (a + b x + c y + d r^2, r from the middle), garment that reaches the border left out; each pixel is then
    scaled by the light's brightest value over its value there, as light multiplies what it falls on: the backdrop
    comes out one grey, the garment as it would look on it under even light. Light that varies by less than
    OBJECT_CONTRAST_FLOOR over the image, or a border that is mostly garment, leaves the image as it is."""
    h, w = image.shape
    half = max(h - 1, w - 1, 1) / 2  # one scale for both axes: a round vignette stays round
    rows, cols = (np.arange(h) - (h - 1) / 2) / half, (np.arange(w) - (w - 1) / 2) / half
    y = np.concatenate([np.full(w, rows[0]), np.full(w, rows[-1]), rows, rows])  # `_border`'s order
    x = np.concatenate([cols, cols, np.full(h, cols[0]), np.full(h, cols[-1])])
    terms = np.stack(_light_terms(y, x), axis=1)
    values = _border(image).astype(np.float64)
    # Garment on the border lies on one side of the backdrop's light: darker on a light backdrop, lighter on a dark
    # one. Each side is tried, and the fit that explains its backdrop more closely is kept.
    coef, _, backdrop = min((_backdrop_fit(terms, values, side) for side in (1.0, -1.0)), key=lambda f: f[1])
    if backdrop.mean() < BACKDROP_SHARE:
        return image
    grid = _light_terms(rows[:, None].astype(np.float32), cols[None, :].astype(np.float32))
    light = sum(c * t for c, t in zip(coef, grid, strict=True))
    if light.max() - light.min() < OBJECT_CONTRAST_FLOOR:
        return image
    light = np.clip(light, 1, 255)
    return np.clip(np.round(image * (light.max() / light)), 0, 255).astype(np.uint8)


def _light_terms(y: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """The light's model, a + b x + c y + d r^2, as its terms at rows `y` and columns `x` (broadcast together)."""
    y, x = np.broadcast_arrays(y, x)
    return [np.ones_like(x), x, y, x * x + y * y]


def _backdrop_fit(terms: np.ndarray, values: np.ndarray, side: float) -> tuple[np.ndarray, float, np.ndarray]:
    """The light's coefficients fitted to the border `values`, with garment taken to lie on `side` of it (+1: darker):
    each fit leaves out the border's 1 - BACKDROP_SHARE farthest on that side; the last one every pixel within
    BACKDROP_SIGMAS robust deviations. Returns the coefficients, that deviation and which pixels it counted."""
    backdrop = np.ones(values.size, bool)
    for _ in range(BACKDROP_FITS):
        coef = np.linalg.lstsq(terms[backdrop], values[backdrop], rcond=None)[0]
        above = side * (values - terms @ coef)
        backdrop = above >= np.quantile(above, 1 - BACKDROP_SHARE)
    centre = float(np.median(above[backdrop]))
    sigma = max(1.4826 * float(np.median(np.abs(above[backdrop] - centre))), 1.0)
    backdrop = np.abs(above - centre) <= BACKDROP_SIGMAS * sigma
    coef = np.linalg.lstsq(terms[backdrop], values[backdrop], rcond=None)[0]
    return coef, sigma, backdrop


def _light_on_dark(image: np.ndarray) -> np.ndarray:
    """`image`, inverted where its garment is darker than its background: where most of the border is one grey (a
    background), by what stands out from it; else (nothing stands out, or a garment that fills the frame) by whether
    the border is mostly light."""
    border = _border(image)
    background = int(np.median(border))
    stands_out = np.abs(image.astype(np.int16) - background) > OBJECT_CONTRAST
    uniform = np.mean(np.abs(border.astype(np.int16) - background) <= OBJECT_CONTRAST) >= 0.75
    if uniform and np.count_nonzero(stands_out) >= max(OBJECT_MIN_SHARE * image.size, 1):
        dark = image[stands_out].mean() < background
    else:
        dark = border.mean() > 127
    return 255 - image if dark else image


def to_fmnist(image: np.ndarray, name: str = "an image") -> np.ndarray:
    """A greyscale uint8 image of any size -> 28x28, light object on a black background, cropped to the object, its
    lightest pixel white (as in 92% of Fashion-MNIST's images; all reach 250). A 28x28 image only gets the inversion."""
    from PIL import Image, ImageFilter

    if image.shape == IMAGE_SHAPE:
        return _light_on_dark(image).astype(np.uint8)
    image = _light_on_dark(_even_light(image))
    border = _border(image).astype(np.int16)
    background = int(np.median(border))
    spread = 1.4826 * float(np.median(np.abs(border - background)))  # the photo's noise, or its background's grading
    signed = image.astype(np.int16) - background
    # The garment where it stands out either way (a white sole on grey too), and so does a blurred copy: a lone noisy
    # pixel does not. The background's own variation never sets the bar above half the garment's contrast.
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1)), np.int16)
    away = np.minimum(np.abs(signed), np.abs(blurred - background))
    level = min(NOISE_SIGMAS * spread, int(away.max()) / 2)
    found = away > max(OBJECT_CONTRAST * int(away.max()) / 255, level, OBJECT_CONTRAST_FLOOR)
    h, w = image.shape  # a crop's row (column) holds two garment pixels, where the image is that wide (tall)
    rows, cols = np.nonzero(found.sum(1) >= min(2, w))[0], np.nonzero(found.sum(0) >= min(2, h))[0]
    image = np.where(signed > level, signed, 0).astype(np.uint8)  # black around, the noise and grading too
    if np.count_nonzero(found) >= max(OBJECT_MIN_SHARE * image.size, 1) and rows.size and cols.size:
        image = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    else:
        logging.warning(
            "%s: nothing in it stands out from its background: the whole image is classified, and its class may "
            "mean little",
            name,
        )
    h, w = image.shape
    scale = 28 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    if resized.max() > 0:
        resized = np.round(resized * (255 / resized.max())).astype(np.uint8)
    out = np.zeros(IMAGE_SHAPE, np.uint8)
    top, left = (29 - size[1]) // 2, (29 - size[0]) // 2  # an odd spare pixel above and to the left, as in the data
    out[top : top + size[1], left : left + size[0]] = resized
    return out


def _as_8_bit(values: np.ndarray, *, sixteen_bit: bool, unit: bool) -> np.ndarray:
    """Grey values as 0-255 uint8, rounded and clipped: 16-bit ones divided by 257, ones in [0, 1] (`unit`) times 255,
    others as they are."""
    values = np.asarray(values, np.float64)
    values = values / 257 if sixteen_bit else values * 255 if unit else values
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _npy_as_8_bit(array: np.ndarray) -> np.ndarray:
    """An .npy's numbers as 0-255 uint8: integers 0-255 as they are, up to 65535 as a 16-bit PNG's (/257); floats
    0-1 times 255 (up to 1 + UNIT_ROUNDING: clipped to 1), from 2 to 255 as they are; a mask (booleans) 0 or 255.
    Others are refused, not clipped into range."""
    if array.dtype.kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype.kind not in "uif" or not np.isfinite(array).all():
        raise ValueError("it holds NaN or infinite values" if array.dtype.kind == "f" else f"{array.dtype} values")
    low, high = array.min(), array.max()
    limit = 65535 if array.dtype.kind in "ui" else 255
    if low < 0 or high > limit:
        raise ValueError(
            f"values from {low} to {high}: expected grey levels 0-255, floats 0-1, or 16-bit integers 0-65535"
        )
    if array.dtype.kind == "f" and 1 < high <= 1 + UNIT_ROUNDING:  # 0-1 values a rounding took just past 1
        array, high = np.minimum(array, 1.0), 1.0
    if array.dtype.kind == "f" and 1 < high < 2:  # 0-1 values taken past 1, or grey levels near black?
        raise ValueError(
            f"floats up to {high}: read as 0-1 they pass 1, read as grey levels 0-255 they are black; clip 0-1 "
            "values to 1, or scale grey levels to 0-255"
        )
    return _as_8_bit(
        array, sixteen_bit=array.dtype.kind in "ui" and high > 255, unit=array.dtype.kind == "f" and high <= 1
    )


def _greyscale(img) -> np.ndarray:
    """A PIL image as 0-255 greyscale: 16- and 32-bit integer and float images scaled, not clipped; a transparent
    background white (what a viewer shows; the colour hidden under it is often black, and would hide the garment)."""
    from PIL import Image

    if img.mode.startswith("I") or img.mode == "F":  # "I;16" (16-bit PNG), "I" (32-bit), "F" (float)
        raw = np.asarray(img, np.float64)
        sixteen_bit = img.mode.startswith("I;16") or (img.mode == "I" and raw.max() > 255)
        grey = _as_8_bit(raw, sixteen_bit=sixteen_bit, unit=img.mode == "F" and raw.max() <= 1.0)
        if "transparency" in img.info:  # one grey value marked transparent (a PNG's tRNS), read before the scaling
            grey[raw == img.info["transparency"]] = 255
        return grey
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(img.convert("L"))


def _read_one(path: pathlib.Path) -> list[np.ndarray]:
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as f:
            magic = f.read(6)
        if not magic:
            raise ValueError("an empty .npy file")
        if magic != b"\x93NUMPY":
            raise ValueError("not a .npy file (it lacks NumPy's header)")
        try:
            array = np.load(path, allow_pickle=False)
        except (EOFError, ValueError) as e:
            if "allow_pickle" in str(e):  # an array of Python objects, which only unpickling could read
                raise ValueError("an array of Python objects, which is read only by unpickling; save numbers") from e
            raise ValueError(f"a damaged or truncated .npy file ({e})") from e
        if array.ndim not in (2, 3) or array.shape[-2:] != IMAGE_SHAPE:
            raise ValueError(f"shape {array.shape}; expected (28, 28) or (N, 28, 28)")
        if array.ndim == 2:
            array = array[None]
        if len(array) == 0:
            raise ValueError("shape (0, 28, 28): no images")
        if array.dtype != np.uint8:  # integers above 255 as a 16-bit PNG is (/257), floats up to 1 (x255)
            array = _npy_as_8_bit(array)
        return list(array)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said in one line of our own
            with Image.open(path) as img:
                if img.width * img.height > LARGE_IMAGE_PIXELS:
                    logging.warning(
                        "%s: %d x %d pixels (%.0f megapixels), read whole: it takes memory, and a copy of a tenth of "
                        "the size classifies the same (it becomes 28 x 28)",
                        *(path, img.width, img.height, img.width * img.height / 1e6),
                    )
                return [to_fmnist(_greyscale(ImageOps.exif_transpose(img)), str(path))]  # upright, as viewed
    except UnidentifiedImageError as e:
        raise ValueError("not an image PIL can read") from e
    except Image.DecompressionBombError as e:
        raise ValueError(f"too large to read safely ({e})") from e


def load_images(paths: Sequence[pathlib.Path]) -> tuple[np.ndarray, list[str]]:
    """All images as (N, 28, 28) uint8 and a name for each (the file, or file[i] inside an .npy)."""
    images, names, errors = [], [], []
    for path in paths:
        try:
            found = _read_one(path)
        except (OSError, ValueError) as e:
            errors.append(f"{path}: {getattr(e, 'strerror', None) or e}")
            continue
        images.extend(found)
        names.extend(
            [str(path)]
            if len(found) == 1 and path.suffix.lower() != ".npy"
            else [f"{path}[{i}]" for i in range(len(found))]
        )
    if errors:
        raise PredictError(
            "cannot read " + "; ".join(errors) + f". Inputs must be images ({', '.join(IMAGE_SUFFIXES)}) "
            "or .npy arrays of shape (28, 28) or (N, 28, 28)."
        )
    return np.stack(images), names


def output_path(setting: str, workdir: pathlib.Path, *, inputs: Sequence[pathlib.Path] = ()) -> pathlib.Path:
    """Where the predictions go (`config.predict.output`: a file, or a folder for its predict.json; "": the
    workdir's predict.json), checked before any model loads: a folder that cannot be written (a read-only archive
    of a run) is an error naming the setting that writes elsewhere; so is one of the `inputs`, or what the run keeps
    in its workdir (`RUN_FILES`, its hidden files: its lock, a config.json kept to put back; its scorings apart)."""
    path = pathlib.Path(setting).expanduser() if setting else workdir / OUTPUT_FILE
    path = path / OUTPUT_FILE if path.is_dir() or setting.endswith(("/", os.sep)) else path
    target = path.resolve()
    if any(target == pathlib.Path(p).resolve() for p in inputs):
        raise PredictError(
            f"--config.predict.output={setting}: {path} is one of the images to classify; choose another file."
        )
    inside = target.relative_to(workdir.resolve()).parts if target.is_relative_to(workdir.resolve()) else ()
    if inside and (inside[0] in RUN_FILES or inside[0].startswith((".", *RUN_PREFIXES))):
        what = "is the run's own" if len(inside) == 1 else "is inside the run's own"
        raise PredictError(
            f"--config.predict.output={setting}: {path} {what} {inside[0]}, which the predictions must not replace; "
            f"choose another file, e.g. {workdir / OUTPUT_FILE}."
        )
    if not files.writable(path.parent):
        why = files.not_a_folder(path.parent) or ("no such folder" if not path.parent.is_dir() else "not writable")
        where = f"{path.parent} is {why}" if why.startswith(("a file", "a symbolic")) else why
        raise PredictError(
            f"cannot write the predictions to {path} ({where}); set --config.predict.output=FILE to write them "
            "elsewhere."
        )
    if path.exists() and path.stat().st_size and not _holds_predictions(path):  # (an empty file holds nothing)
        raise PredictError(
            f"--config.predict.output={setting}: {path} exists and holds no predictions (another file, which they must "
            "not replace); choose a new file, or one this command wrote before."
        )
    return path


def _holds_predictions(path: pathlib.Path) -> bool:
    """Whether `path` is a file of predictions as `report` writes them (a JSON list of its rows): one that a rerun
    may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if not head.lstrip().startswith(b"["):  # not JSON's list: a large file of another kind is not read whole
                return False
            rows = json.loads(head + f.read())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and set(r) == set(PREDICTION_FIELDS) for r in rows)


def report(output: pathlib.Path, names: Sequence[str], probs: np.ndarray | None, preds: np.ndarray) -> list[dict]:
    """Prints one line per input and writes them to `output` (`output_path`)."""
    rows = []
    for i, name in enumerate(names):
        c = int(preds[i])
        row = {  # PREDICTION_FIELDS
            "input": name,
            "class": c,
            "name": CLASS_NAMES[c],
            "probability": None if probs is None else float(probs[i, c]),
        }
        rows.append(row)
        prob = "" if probs is None else f"  p={probs[i, c]:.3f}"
        print(f"{name}: {c} {CLASS_NAMES[c]}{prob}")
    files.atomic_write_text(output, json.dumps(rows, indent=2) + "\n")
    return rows
