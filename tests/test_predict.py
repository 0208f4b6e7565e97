"""predict.py and mode=predict: the user's own images (any size, PNG/JPEG or .npy) through a checkpoint."""

import numpy as np
import pytest
from PIL import Image

from fmnist_jax import predict, run


def test_predict_own_images_from_a_checkpoint(two_epoch_run, tmp_path, capsys):
    config, workdir = two_epoch_run
    # Own images: a PNG of another size and colour scheme, and an .npy stack; one bad file named in the error.
    bar = np.full((56, 40), 255, np.uint8)
    bar[8:14, 6:34] = 0  # a dark bar on white: inverted and shrunk to Fashion-MNIST's look
    Image.fromarray(bar).convert("RGB").save(tmp_path / "bar.png")
    np.save(tmp_path / "stack.npy", np.zeros((2, 28, 28), np.uint8))
    config.mode, config.checkpoint.step = "predict", None
    config.predict.inputs = f"{tmp_path / 'bar.png'},{tmp_path / 'stack.npy'}"
    rows = run.run(config, workdir)
    assert [r["input"] for r in rows] == [
        str(tmp_path / "bar.png"),
        f"{tmp_path / 'stack.npy'}[0]",
        f"{tmp_path / 'stack.npy'}[1]",
    ]
    assert all(0 <= r["class"] < 10 and 0.1 <= r["probability"] <= 1 for r in rows)
    assert f"{tmp_path / 'bar.png'}: {rows[0]['class']} {rows[0]['name']}" in capsys.readouterr().out
    assert (workdir / predict.OUTPUT_FILE).exists()
    (tmp_path / "bad.png").write_text("not an image")
    config.predict.inputs = f"{tmp_path / 'bad.png'},{tmp_path / 'missing.jpg'}"
    with pytest.raises(predict.PredictError, match=r"bad.png: not an image PIL can read; .*missing.jpg: No such file"):
        run.run(config, workdir)


def test_prediction_image_conversion():
    white_on_black = np.zeros((10, 20), np.uint8)
    white_on_black[4:6, :] = 255
    out = predict.to_fmnist(white_on_black)
    assert out.shape == (28, 28) and out[:7].max() == 0 and out.max() > 200  # centred, kept light
    assert predict.to_fmnist(255 - white_on_black).max() > 200  # dark-on-light is inverted
