"""predict.py and mode=predict: the user's own images (any size, PNG/JPEG or .npy) through a checkpoint."""

import io
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys

import helpers
import numpy as np
import pytest
from PIL import Image

from fmnist_jax import data, files, metrics, predict, run


def test_predict_own_images_from_a_checkpoint(two_epoch_run, tmp_path, capsys):
    config, workdir = two_epoch_run
    # Own images: a PNG of another size and colour scheme, and an .npy stack; one bad file named in the error.
    bar = np.full((56, 40), 255, np.uint8)
    bar[8:14, 6:34] = 0  # a dark bar on white: inverted and shrunk to Fashion-MNIST's look
    Image.fromarray(bar).convert("RGB").save(tmp_path / "bar.png")
    np.save(tmp_path / "stack.npy", np.zeros((2, 28, 28), np.uint8))
    # And three of the run's own test images, whose probabilities its final evaluation saved.
    np.save(tmp_path / "test.npy", data.load(config.data, seed=config.seed).test.images[:3])
    saved = metrics.load_predictions(workdir)["probs"][:3]
    config.mode, config.checkpoint.step = "predict", None
    config.predict.inputs = ",".join(str(tmp_path / name) for name in ("bar.png", "stack.npy", "test.npy"))
    rows = run.run(config, workdir)
    assert [r["input"] for r in rows] == [
        str(tmp_path / "bar.png"),
        f"{tmp_path / 'stack.npy'}[0]",
        f"{tmp_path / 'stack.npy'}[1]",
    ] + [f"{tmp_path / 'test.npy'}[{i}]" for i in range(3)]
    np.testing.assert_array_equal([r["class"] for r in rows[3:]], saved.argmax(-1))
    np.testing.assert_allclose([r["probability"] for r in rows[3:]], saved.max(-1), atol=1e-5)
    assert rows[1]["class"] == rows[2]["class"] and rows[1]["probability"] == rows[2]["probability"]
    assert f"{tmp_path / 'bar.png'}: {rows[0]['class']} {rows[0]['name']}" in capsys.readouterr().out
    assert json.loads((workdir / predict.OUTPUT_FILE).read_text()) == rows
    (tmp_path / "bad.png").write_text("not an image")
    config.predict.inputs = f"{tmp_path / 'bad.png'},{tmp_path / 'missing.jpg'}"
    with pytest.raises(predict.PredictError, match=r"bad.png: not an image PIL can read; .*missing.jpg: No such file"):
        run.run(config, workdir)


# In a new process (this one's caches hold the tiny run's programs): how many programs restoring the checkpoint of
# `python -c RESTORE CONFIG_JSON WORKDIR` lowers, its step and parameter count, as JSON.
RESTORE = """
import json, pathlib, sys
import jax
import ml_collections
from jax._src import dispatch
from fmnist_jax import parallel
from fmnist_jax.training import evaluate
config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
lowered = []
def count(event, duration, **kwargs):
    if event == dispatch.JAXPR_TO_MLIR_MODULE_EVENT:
        lowered.append(kwargs.get("fun_name"))
jax.monitoring.register_event_duration_secs_listener(count)
_, _, num_params, meta = evaluate.restore_for_inference(config, pathlib.Path(sys.argv[2]), parallel.make_mesh())
print(json.dumps({"lowered": lowered, "step": meta["step"], "num_params": num_params}))
"""


def test_evaluate_and_predict_restore_onto_shapes_alone_compiling_nothing(two_epoch_run):
    """The checkpoint's target is the state's shapes, dtypes and placement: no model is initialised for the restore
    to replace (in a new process, the initialisation's program, the optimizer's dozen; the initialisation's compile
    alone took 1.2 s of a CPU's 2.8-s predict). The restored state is the run's final one, bit for bit."""
    from fmnist_jax import config_lib, parallel
    from fmnist_jax.training import evaluate
    from fmnist_jax.training import state as train_state

    config, workdir = two_epoch_run
    arguments = (json.dumps(config_lib.to_dict(config)), str(workdir))
    out = helpers.check(helpers.run_main(*arguments, script=("-c", RESTORE)))
    restored = json.loads(out.stdout.splitlines()[-1])
    assert restored == {"lowered": [], "step": 8, "num_params": metrics.load_results(workdir)["num_params"]}
    _, state, _, meta = evaluate.restore_for_inference(config, workdir, parallel.make_mesh())
    # The final checkpoint's state is the run's final state: the values landed in their places.
    assert train_state.params_sha256(state) == metrics.load_results(workdir)["params_sha256"]
    assert int(state.optimizer["step"][...]) == meta["step"] == 8


def test_predictions_go_where_predict_output_says_and_a_run_that_cannot_be_written_is_read(
    two_epoch_run, tmp_path, monkeypatch
):
    """`predict.output` names a file or a folder for the predictions. A workdir that cannot be written (a run kept
    on read-only storage) is read without its lock; the predictions must then go elsewhere, and the error before
    the model loads says how."""
    config, workdir = two_epoch_run
    np.save(tmp_path / "one.npy", np.zeros((1, 28, 28), np.uint8))
    config.mode, config.predict.inputs = "predict", str(tmp_path / "one.npy")
    (tmp_path / "out").mkdir()
    config.predict.output = str(tmp_path / "out")
    rows = run.run(config, workdir)
    assert json.loads((tmp_path / "out" / predict.OUTPUT_FILE).read_text()) == rows
    assert not (workdir / predict.OUTPUT_FILE).exists()
    helpers.read_only_below(monkeypatch, workdir)  # the run as on a read-only mount
    monkeypatch.setattr(files, "workdir_lock", lambda folder: pytest.fail(f"{folder} was locked"))
    config.predict.output = ""
    says = rf"cannot write the predictions to {workdir}/predict\.json \(not writable\); set --config\.predict\.output="
    with pytest.raises(predict.PredictError, match=says):
        run.run(config, workdir)
    config.predict.output = str(tmp_path / "elsewhere.json")
    before = helpers.snapshot(workdir)
    assert run.run(config, workdir) == rows
    assert helpers.snapshot(workdir) == before  # nothing written, not even the store's probe
    assert json.loads((tmp_path / "elsewhere.json").read_text()) == rows
    config.predict.output = str(tmp_path / "no" / "such.json")
    with pytest.raises(predict.PredictError, match=r"no/such\.json \(no such folder\); set --config\.predict"):
        run.run(config, workdir)
    config.predict.output = f"{tmp_path / 'new'}/"  # a folder, by its slash: not a file named "new"
    with pytest.raises(predict.PredictError, match=r"new/predict\.json \(no such folder\)"):
        run.run(config, workdir)


def test_predictions_replace_earlier_predictions_only_and_a_path_under_a_file_is_named(tmp_path):
    """An existing `predict.output` is replaced only where it holds predictions (a rerun's): another run's results,
    a model or any other file is refused before the model loads, left as it was; a folder in the path that is a file
    is named as one."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    earlier = tmp_path / "earlier.json"
    predict.report(earlier, ["a.png"], np.eye(10)[[3]], np.array([3]))
    assert predict.output_path(str(earlier), workdir) == earlier
    others = {
        "results.json": json.dumps({"test_accuracy": 0.9}),  # another run's scores
        "rows.json": json.dumps([{"input": "a.png", "class": 3}]),  # rows, but not predictions
        "model.joblib": "\x80\x04 not JSON",
    }
    for name, text in others.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(predict.PredictError, match=rf"{name} exists and holds no predictions .*choose a new file"):
            predict.output_path(str(tmp_path / name), workdir)
        assert (tmp_path / name).read_text() == text
    (tmp_path / "afile").write_text("")  # empty: holds nothing to lose (`mktemp`'s file)
    assert predict.output_path(str(tmp_path / "afile"), workdir) == tmp_path / "afile"
    with pytest.raises(predict.PredictError, match=rf"\({tmp_path}/afile is a file, not a folder\); set --config"):
        predict.output_path(str(tmp_path / "afile" / "out.json"), workdir)
    with pytest.raises(predict.PredictError, match=r"run/config\.json is the run's own config\.json, which"):
        predict.output_path(str(workdir / "config.json"), workdir)
    with pytest.raises(predict.PredictError, match=r"run/checkpoints/8 is inside the run's own checkpoints, which"):
        predict.output_path(str(workdir / "checkpoints" / "8"), workdir)


@pytest.mark.parametrize(
    "target",
    [
        *("config.json", "results.json", "checkpoints", ".lock", "the input"),
        *("evaluate_step_8/results.json", "checkpoints_damaged/8"),  # a scoring apart, a checkpoint set aside
    ],
)
def test_predictions_never_replace_an_input_or_what_the_run_keeps(two_epoch_run, tmp_path, target):
    """`predict.output` pointed at one of the images, or at a file or folder the run keeps in its workdir (its
    config, scores, checkpoints, lock), is refused before anything is read or written: the run stays whole."""
    config, workdir = two_epoch_run
    image = tmp_path / "one.npy"
    np.save(image, np.zeros((1, 28, 28), np.uint8))
    config.mode, config.predict.inputs = "predict", str(image)
    config.predict.output = str(image if target == "the input" else workdir / target)
    made = workdir / target.split("/")[0] if "/" in target else None  # as a scoring apart or a damaged step leaves
    if made:
        (workdir / target).parent.mkdir(parents=True)
        (workdir / target).mkdir() if target.startswith("checkpoints") else (workdir / target).write_text("{}")

    def kept():  # the lock aside: each start takes it anew
        return {k: v for k, v in helpers.snapshot(workdir).items() if k != ".lock"}, image.read_bytes()

    try:
        before = kept()
        with pytest.raises(
            predict.PredictError, match=r"--config\.predict\.output=.*(one of the images|the run's own)"
        ):
            run.run(config, workdir)
        assert kept() == before
    finally:
        if made:
            shutil.rmtree(made)  # the run is shared by other tests


def test_predict_reads_a_run_on_a_read_only_mount(two_epoch_run, tiny_data, tmp_path):
    """The run bind-mounted read-only (a mount namespace of main.py's own: root, Linux): `predict` restores its
    checkpoint writing nothing, where the store's write probe once refused it, and writes the predictions elsewhere."""
    _, workdir = two_epoch_run
    if subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode:
        pytest.skip("no mount namespace here (unshare -m needs root): the read-only mount cannot be made")
    np.save(tmp_path / "one.npy", np.zeros((1, 28, 28), np.uint8))
    mount = tmp_path / "archive"
    mount.mkdir()
    args = helpers.tiny_args(tiny_data, mount, mode="predict", **{"predict.inputs": str(tmp_path / "one.npy")})
    command = [sys.executable, str(helpers.ROOT / "main.py"), *args, f"--config.predict.output={tmp_path}"]
    script = f"mount --bind {workdir} {mount} && mount -o remount,bind,ro {mount} && exec {shlex.join(command)}"
    before = helpers.snapshot(workdir)
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / predict.OUTPUT_FILE).read_text())[0]["input"] == f"{tmp_path / 'one.npy'}[0]"
    assert helpers.snapshot(workdir) == before


def test_prediction_image_conversion():
    white_on_black = np.zeros((10, 20), np.uint8)
    white_on_black[4:6, :] = 255
    out = predict.to_fmnist(white_on_black)
    assert out.shape == (28, 28) and out[:7].max() == 0 and out.max() > 200  # centred, kept light
    assert predict.to_fmnist(255 - white_on_black).max() > 200  # dark-on-light is inverted


def test_a_photo_is_trimmed_to_its_garment_whose_longer_side_fills_the_28_pixels():
    """Fashion-MNIST's garments are trimmed to their bounding box: a margin of background in a photo would shrink
    the garment (a garment in the middle half of its photo scored 0.33 instead of 0.90 before the crop)."""
    y, x = np.mgrid[:100, :60]
    garment = np.where(((y - 49.5) / 50) ** 2 + ((x - 29.5) / 30) ** 2 <= 1, 200, 0).astype(np.uint8)
    photo = np.zeros((280, 280), np.uint8)
    photo[90:190, 110:170] = garment  # in the middle of a dark photo, as Fashion-MNIST's are
    trimmed = predict.to_fmnist(garment)
    np.testing.assert_array_equal(predict.to_fmnist(photo), trimmed)
    np.testing.assert_array_equal(predict.to_fmnist(255 - photo), trimmed)  # a dark garment on white: inverted
    rows = np.nonzero(trimmed.max(1))[0]
    assert rows.max() - rows.min() + 1 == 28  # the longer side fills the image
    noisy = photo.copy()
    noisy[::7, ::5] += 20  # JPEG-like noise on the background stays under the contrast that marks the garment
    assert np.abs(predict.to_fmnist(noisy).astype(int) - trimmed).max() <= 20
    faint = np.full((400, 400), 255, np.uint8)
    faint[100:300, 150:250] = 225  # a faint garment (30 grey levels) on clean white, and a speck of dust
    faint[20, 20] = 0
    lit = predict.to_fmnist(faint) > 20
    assert lit[:, 7:21].all() and not lit[:, :7].any() and not lit[:, 21:].any()  # the garment's crop, not the speck's


def test_deep_images_are_scaled_and_unreadable_inputs_named(tmp_path, monkeypatch):
    # A 16-bit greyscale PNG (mode "I;16", or "I" before Pillow 10.1): scaled to 0-255, not clipped to white.
    ramp = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    (image,), _ = predict.load_images([tmp_path / "deep.png"])
    expected = predict.to_fmnist(np.round(ramp / 257).astype(np.uint8))
    assert np.abs(image.astype(int) - expected).max() <= 1 and 100 < image.mean() < 155
    # An empty .npy, a stack of no images, a colour array, an image over PIL's safety limit: each named, one error.
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(tmp_path / "rgb.npy", np.zeros((28, 28, 3), np.uint8))
    np.save(tmp_path / "short.npy", np.zeros((27, 28), np.uint8))  # named by its own shape, not as a stack of one
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 28*28 = 784 > 2 * 100: a "decompression bomb"
    with pytest.raises(predict.PredictError) as error:
        predict.load_images([tmp_path / n for n in ("empty.npy", "none.npy", "rgb.npy", "short.npy", "deep.png")])
    message = str(error.value)
    assert "empty.npy: an empty .npy file" in message and "none.npy: shape (0, 28, 28): no images" in message
    assert "rgb.npy: shape (28, 28, 3); expected (28, 28) or (N, 28, 28)" in message
    assert "short.npy: shape (27, 28); expected (28, 28) or (N, 28, 28)" in message
    assert "deep.png: too large to read safely" in message
    for nothing in ("", " , ", []):  # no path at all: the flag's form is shown
        with pytest.raises(predict.PredictError, match=r"config.predict.inputs is empty: .*inputs=shirt.png,boot.jpg"):
            predict.parse_inputs(nothing)


def test_photos_stand_upright_transparency_is_white_and_npy_arrays_scale_like_pngs(tmp_path):
    """A phone photo's EXIF orientation is applied; a transparent background counts as the white a viewer shows
    (its hidden colour, here black, would hide a dark garment), in a 16-bit PNG too; a 16-bit .npy scales as a 16-bit
    PNG does; an .npy that is no array of numbers is named."""
    stored = np.zeros((20, 28), np.uint8)
    stored[:4, :] = 255  # a light band along the top as stored, on the right once rotated for viewing
    photo = Image.fromarray(stored)
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    photo.save(tmp_path / "photo.jpg", exif=exif)
    (upright,), _ = predict.load_images([tmp_path / "photo.jpg"])
    viewed, as_stored = (predict.to_fmnist(np.ascontiguousarray(a)) for a in (np.rot90(stored, -1), stored))
    assert np.abs(upright.astype(int) - viewed).max() <= 8  # JPEG's rounding
    assert np.abs(upright.astype(int) - as_stored).max() > 200
    garment = np.zeros((28, 28, 4), np.uint8)  # RGBA: transparent black around
    garment[6:22, 8:20] = (20, 20, 20, 255)  # an opaque dark garment
    Image.fromarray(garment, "RGBA").save(tmp_path / "product.png")
    (image,), _ = predict.load_images([tmp_path / "product.png"])
    assert image[:4].max() == 0 and image[10:18, 10:18].min() > 200  # inverted off white: a light garment on black
    deep = np.full((28, 28), 30000, np.uint16)
    np.save(tmp_path / "deep.npy", deep)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    from_npy, from_png = predict.load_images([tmp_path / "deep.npy", tmp_path / "deep.png"])[0]
    assert int(from_npy.max()) == round(30000 / 257)
    np.testing.assert_array_equal(predict.to_fmnist(from_npy), from_png)
    deep[6:22, 8:20] = 5140  # 16-bit grey 20 on a background marked transparent (tRNS): scaled, then white
    Image.fromarray(deep).save(tmp_path / "deep_clear.png", transparency=30000)
    (clear,), _ = predict.load_images([tmp_path / "deep_clear.png"])
    np.testing.assert_array_equal(clear, predict.to_fmnist(np.where(deep == 30000, 255, 20).astype(np.uint8)))
    (tmp_path / "png.npy").write_bytes((tmp_path / "deep.png").read_bytes())
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan))
    (tmp_path / "torn.npy").write_bytes((tmp_path / "deep.npy").read_bytes()[:300])
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    inputs = [tmp_path / f"{name}.npy" for name in ("png", "nan", "torn", "objects")]
    with pytest.raises(predict.PredictError) as error:
        predict.load_images(inputs)
    message = str(error.value)
    assert "torn.npy: a damaged or truncated .npy file (" in message
    assert "objects.npy: an array of Python objects, which is read only by unpickling; save numbers" in message
    assert "png.npy: not a .npy file (it lacks NumPy's header)" in message and "allow_pickle" not in message
    assert "nan.npy: it holds NaN or infinite values" in message


def photo_of(garment: np.ndarray, background: int, size: int = 200) -> np.ndarray:
    """`garment` (light on black, as Fashion-MNIST's) enlarged 4x into a photo: dark on a `background` grey."""
    big = np.kron(garment, np.ones((4, 4), np.uint8)).astype(np.int16)
    photo = np.full((size, size), background, np.int16)
    at = (size - big.shape[0]) // 2, (size - big.shape[1]) // 2
    photo[at[0] : at[0] + big.shape[0], at[1] : at[1] + big.shape[1]] -= big * background // 255
    return photo.astype(np.uint8)


def test_a_photo_on_any_plain_background_comes_out_as_fashion_mnist_shows_garments(real_data_dir):
    """A dark garment on white, on light grey or on mid grey (a border mean under 127) is inverted; its background is
    taken down to black and its lightest pixel to white; every image of the data set is left as it is, and its
    negative brought back."""
    images = data.read_idx_images(real_data_dir / "t10k-images-idx3-ubyte.gz")[0]
    assert all(np.array_equal(predict.to_fmnist(image), image) for image in images)
    assert all(np.array_equal(predict.to_fmnist(255 - image), image) for image in images)
    differences = []  # from the same garment's photo on white, per image
    for garment in images[:20]:
        white, *greys = outs = [predict.to_fmnist(photo_of(garment, grey)) for grey in (255, 210, 120)]
        lit = np.count_nonzero(garment > 20)
        for out in outs:  # black around, not grey (where nearly all 784 pixels would be lit)
            assert out.max() == 255 and abs(np.count_nonzero(out > 20) - lit) < 0.25 * lit
        differences.append([np.abs(grey.astype(int) - white).mean() for grey in greys])
    assert np.mean(differences) < 3 and np.corrcoef(white.ravel(), garment.ravel())[0, 1] > 0.9


def test_a_faint_garment_in_a_noisy_jpeg_is_cropped_to_itself_not_to_the_noise(real_data_dir):
    """A light-grey garment (at most 60 grey levels off white) in a photo with sensor noise (sigma 3, clipped at
    white) saved as PNG or JPEG: lone noisy pixels do not widen the crop, so the garment, not the whole frame, fills
    the 28 pixels, and its background stays black."""
    images = data.read_idx_images(real_data_dir / "t10k-images-idx3-ubyte.gz")[0][:10]
    rng = np.random.default_rng(0)
    for save in ({"format": "PNG"}, {"format": "JPEG", "quality": 85}):
        differences = []
        for garment in images:
            faint = photo_of((garment.astype(int) * 60 // 255).astype(np.uint8), 255).astype(float)
            noisy = np.clip(faint + rng.normal(0, 3, faint.shape), 0, 255).astype(np.uint8)
            saved = io.BytesIO()
            Image.fromarray(noisy).save(saved, **save)
            out = predict.to_fmnist(np.asarray(Image.open(saved).convert("L")))
            differences.append(np.abs(out.astype(int) - predict.to_fmnist(photo_of(garment, 255))).mean())
        assert max(differences) < 25 and np.mean(differences) < 8, save  # cropped to the frame: 40-100


@pytest.mark.parametrize("left, garment", [(215, 170), (180, 30), (230, 190)])
def test_a_garment_on_a_graded_background_is_cropped_to_itself(left, garment, caplog):
    """Light falling off across the backdrop (grey `left` to 250) is no noise to keep the garment's crop from: the
    100 x 60 garment fills the 28 rows, its 17 columns centred, the backdrop black."""
    photo = (np.linspace(left, 250, 300)[None, :] * np.ones((300, 1))).astype(np.uint8)
    photo[100:200, 120:180] = garment
    lit = predict.to_fmnist(photo) > 40
    columns = np.nonzero(lit.any(0))[0]
    assert lit.any(1).all() and (columns.min(), columns.max()) == (6, 22) and "stands out" not in caplog.text


def lit_photo(garment: np.ndarray, light: np.ndarray, rows: slice = slice(None), *, dark: bool = True) -> np.ndarray:
    """`garment` (light on black) enlarged 4x into a photo under `light` (the grey a white surface shows at each
    pixel): light times reflectance. `dark`: a dark garment on a white backdrop (the garment absorbing its share);
    else a light garment on a dark one (reflecting a fifth of the light). `rows` keeps a band of the photo (one that
    cuts into the garment makes it reach the border)."""
    size = light.shape[0]
    big = np.kron(garment, np.ones((4, 4), np.uint8)) / 255
    at = (size - big.shape[0]) // 2
    reflectance = np.full_like(light, 1.0 if dark else 0.2)
    reflectance[at : at + big.shape[0], at : at + big.shape[1]] += -big if dark else 0.8 * big
    return np.round(light * reflectance).astype(np.uint8)[rows]


@pytest.mark.parametrize(
    "centre, corner, sideways, dark",
    [
        *((250, 180, 0, True), (240, 100, 0, True), (200, 80, 0, True), (150, 90, 0, True), (250, 250, 130, True)),
        *((250, 150, 0, False), (250, 250, 130, False)),  # a light garment on a dark backdrop
    ],
)
def test_a_photo_with_a_vignette_comes_out_as_under_even_light(real_data_dir, centre, corner, sideways, dark):
    """A vignette (light falling off from `centre` grey in the middle to `corner` in the corners, as a lens or a lamp
    gives) or light falling off to one side (by `sideways` grey levels from left to right) is evened out: each
    garment, dark on a light backdrop or light on a dark one, comes out as from the same photo under even light
    (before: 20 to 110 grey levels off on average, the corners kept as garment), also where it reaches the photo's
    top and bottom."""
    images = data.read_idx_images(real_data_dir / "t10k-images-idx3-ubyte.gz")[0][:20]
    size = 200
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    vignette = centre + (corner - centre) * (y * y + x * x) / (2 * ((size - 1) / 2) ** 2) - sideways * (x / size + 0.5)
    even = np.full((size, size), float(centre))
    for rows in (slice(None), slice(50, 150)):  # the whole photo; a band that cuts into every garment
        differences = []
        for garment in images:
            out = predict.to_fmnist(lit_photo(garment, vignette, rows, dark=dark))
            expected = predict.to_fmnist(lit_photo(garment, even, rows, dark=dark))
            differences.append(np.abs(out.astype(int) - expected).mean())
        assert np.mean(differences) < 3 and max(differences) < 25, rows  # as on plain and noisy backdrops


def test_a_part_lighter_than_a_grey_background_belongs_to_the_garment_it_is_part_of():
    """A dark shoe with a white sole on grey: the sole stands out from the background too, so the crop holds it,
    though it comes out dark, as a white part does in the data set (photographed on white)."""
    photo = np.full((200, 200), 120, np.uint8)
    photo[50:125, 75:125] = 30  # the upper: 75 of the shoe's 100 rows
    photo[125:150, 75:125] = 250  # the sole
    rows = np.nonzero(predict.to_fmnist(photo).max(1))[0]
    assert rows.min() == 0 and 20 <= rows.max() <= 22  # 75% of 28 rows lit, the sole's dark below


def test_a_garment_with_an_odd_margin_has_its_spare_pixel_above_and_left_as_in_the_data(caplog):
    """Fashion-MNIST puts the odd spare pixel of a centred garment's margin above and to the left (left margin
    minus right: +1 in 3,224 test images, -1 in 10)."""
    photo = np.full((100, 100), 255, np.uint8)
    photo[10:90, 30:67] = 0  # 80 x 37: 28 x 13 once fitted, a margin of 15 columns
    columns = np.nonzero(predict.to_fmnist(photo).max(0))[0]
    assert (columns.min(), columns.max()) == (8, 20)
    assert "stands out" not in caplog.text


def test_an_image_where_nothing_stands_out_is_classified_with_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    assert predict.to_fmnist(np.full((50, 50), 255, np.uint8), "blank.png").max() == 0
    assert "blank.png: nothing in it stands out from its background: the whole image is classified" in caplog.text


def test_npy_values_are_read_as_documented_and_out_of_range_ones_refused(tmp_path):
    """0-255 as they are (integers of any type), floats 0-1 times 255, 16-bit integers /257, a boolean mask 0 or 255;
    a negative value, a float above 255 or an integer above 65535 is refused, not clipped into range."""
    arrays = {
        "eye_int.npy": np.eye(28, dtype=np.int64),
        "mask.npy": np.eye(28, dtype=bool),
        "eye_float.npy": np.eye(28),
        "deep.npy": np.full((28, 28), 65535, np.uint16),
        "negative.npy": np.full((28, 28), -1.0),
        "bright.npy": np.full((28, 28), 1000.0),
        "huge.npy": np.full((28, 28), 70000, np.int32),
        "past_one.npy": np.full((28, 28), 1.01),
        "rounded_past_one.npy": np.eye(28, dtype=np.float32) * np.float32(1.0000001),
    }
    for name, array in arrays.items():
        np.save(tmp_path / name, array)
    names = ("eye_int.npy", "eye_float.npy", "deep.npy", "mask.npy", "rounded_past_one.npy")
    read, _ = predict.load_images([tmp_path / n for n in names])
    assert [int(image.max()) for image in read] == [1, 255, 255, 255, 255] and int(read[3].sum()) == 28 * 255
    np.testing.assert_array_equal(read[4], read[1])  # 0-1 values a rounding took past 1: as 0-1
    levels = np.arange(28 * 28).reshape(28, 28) % 256  # every grey level, as 16-bit values (x257): each comes back
    np.save(tmp_path / "levels.npy", (levels * 257).astype(np.uint16))
    np.testing.assert_array_equal(predict.load_images([tmp_path / "levels.npy"])[0][0], levels)
    with pytest.raises(predict.PredictError) as error:
        predict.load_images([tmp_path / n for n in ("negative.npy", "bright.npy", "huge.npy", "past_one.npy")])
    message = str(error.value)
    for name, values in (("negative", "-1.0 to -1.0"), ("bright", "1000.0 to 1000.0"), ("huge", "70000 to 70000")):
        assert f"{name}.npy: values from {values}: expected grey levels 0-255" in message
    # Floats just past 1: neither reading is safe (0-1 values past 1, or grey levels that are all but black).
    assert "past_one.npy: floats up to 1.01: read as 0-1 they pass 1, read as grey levels 0-255 they are" in message


def test_inputs_are_files_or_patterns_and_a_comma_in_a_name_is_named(tmp_path, caplog, recwarn):
    """`predict.inputs` splits at commas: a pattern (quoted from the shell) gives its matches in order, one that
    matches nothing is an error, and a file whose name holds a comma is named as such, not as two missing files. A
    very large photo is read with one warning line of ours (PIL's own warning left out)."""
    from PIL import Image

    (tmp_path / "[2024]").mkdir()
    for name in ("b.png", "a.png", "with,comma.png", "Shirt, blue, 2.png", "[2024]/x.png", "photo1.png"):
        Image.fromarray(np.full((40, 30), 255, np.uint8)).save(tmp_path / name)
    assert predict.parse_inputs(f"{tmp_path}/?.png") == [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.MonkeyPatch.context() as patch:  # sorted whatever order the file system lists them in
        listed = predict.glob.glob
        patch.setattr(predict.glob, "glob", lambda pattern: sorted(listed(pattern), reverse=True))
        assert predict.parse_inputs(f"{tmp_path}/?.png") == [tmp_path / "a.png", tmp_path / "b.png"]
    assert predict.parse_inputs(f"{tmp_path}/[2024]/*.png") == [tmp_path / "[2024]" / "x.png"]  # "[" as it is
    assert predict.parse_inputs(f"{tmp_path}/photo[1].png") == [tmp_path / "photo[1].png"]  # missing, not photo1.png
    with pytest.raises(predict.PredictError, match=r"inputs: .*/\*\.jpg matches no file\."):
        predict.parse_inputs(f"{tmp_path}/*.jpg")
    many = [f"{tmp_path}/missing.png", *(f"{tmp_path}/a_rather_long_file_name_{i}.png" for i in range(300))]
    assert len(predict.parse_inputs(",".join(many))) == 301  # joined past any name's length: not looked up
    for name in ("with,comma.png", "Shirt, blue, 2.png"):
        with pytest.raises(predict.PredictError, match=rf"{re.escape(name)} holds a comma, which separates the inputs"):
            predict.parse_inputs(f"{tmp_path}/a.png,{tmp_path}/{name}")
    caplog.set_level(logging.WARNING)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict, "LARGE_IMAGE_PIXELS", 1000)
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's warning from there on
        predict.load_images([tmp_path / "a.png"])
    assert "a.png: 30 x 40 pixels (0 megapixels), read whole: it takes memory" in caplog.text
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
