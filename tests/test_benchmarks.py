"""benchmarks/flop_efficiency.py's layer breakdown finds every convolution of a model with the shapes and arguments
training gives it, and its per-layer FLOPs add up to the count taken from the train step's own jaxpr."""

import importlib.util
import json

import jax.numpy as jnp
import pytest
from helpers import ROOT, load_config

from fmnist_jax import ops


@pytest.fixture(scope="module")
def flop_efficiency():
    spec = importlib.util.spec_from_file_location("flop_efficiency", ROOT / "benchmarks" / "flop_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dense_training_flops(batch: int, *shapes: tuple[int, int]) -> int:
    """Forward, weight gradient and input gradient of each (in, out) dense layer."""
    return 3 * sum(2 * batch * i * o for i, o in shapes)


def shift_flops(config) -> int:
    """vgg_bn's 2-pixel shifts: two one-hot (28, 28) selection products per image (fmnist_jax/augment.py)."""
    return 2 * (2 * 28 * 28 * 28) * config.batch_size if config.augment.translate else 0


@pytest.mark.parametrize(
    ("name", "padding", "inputs", "dense"),
    [
        ("cnn", "valid", [(64, 28, 28, 1), (64, 13, 13, 64), (64, 5, 5, 128)], [(256, 256), (256, 10)]),
        (
            "vgg_bn",
            "same",
            [(128, 28, 28, 1), (128, 14, 14, 32), (128, 14, 14, 64), (128, 7, 7, 64), (128, 7, 7, 128)],
            [(1152, 256), (256, 10)],
        ),
    ],
)
def test_the_layer_breakdown_finds_each_convolution_and_its_flops(flop_efficiency, name, padding, inputs, dense):
    config = load_config(name)
    layers = flop_efficiency.conv_layers(config)
    assert [layer["input"] for layer in layers] == inputs
    assert {layer["padding"] for layer in layers} == {padding}
    assert all(layer["kwargs"]["training"] is True and layer["dtype"] == jnp.float32 for layer in layers)
    # The first layer needs no input gradient (its input is the images): 2 products, the others 3.
    conv_flops = sum(flop_efficiency.layer_flops(layer, i == 0) for i, layer in enumerate(layers))
    batch = config.batch_size
    total = conv_flops + dense_training_flops(batch, *dense) + shift_flops(config)
    assert total == flop_efficiency.flops_per_image(config) * batch


def test_the_layer_breakdown_follows_the_compute_dtype(flop_efficiency):
    layers = flop_efficiency.conv_layers(load_config("cnn", compute_dtype="bfloat16"))
    assert [layer["kwargs"]["compute_dtype"] for layer in layers] == [jnp.bfloat16] * 3


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_the_convolutions_stand_in_keeps_shapes_and_removes_every_convolution_product(flop_efficiency, compute_dtype):
    x, kernel = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 5))
    dtype = jnp.dtype(compute_dtype)
    for padding, real in (("valid", ops.conv2d_valid), ("same", ops.conv2d_same)):
        fake = flop_efficiency.stand_in(padding)(x, kernel, "auto", training=True, compute_dtype=dtype)
        assert fake.shape == real(x, kernel, "im2col", compute_dtype=dtype).shape and fake.dtype == dtype
    # With the stand-ins, the step's products are the dense layers' (and vgg_bn's shifts) alone.
    for name, dense in (("cnn", [(256, 256), (256, 10)]), ("vgg_bn", [(1152, 256), (256, 10)])):
        config = load_config(name, compute_dtype=compute_dtype)
        expected = dense_training_flops(config.batch_size, *dense) + shift_flops(config)
        with flop_efficiency.convolutions_stood_in():
            assert flop_efficiency.flops_per_image(config) * config.batch_size == expected


def test_the_layer_breakdown_splits_the_step_at_the_convolutions_measured_in_place(flop_efficiency, capsys):
    flop_efficiency.main(["--configs=cnn", "--layers", "--steps=10", "--matmul_seconds=0.2"])
    _, step, *layers, split = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [layer["layer"] for layer in layers] == [0, 1, 2] and all(layer["ms_per_step"] > 0 for layer in layers)
    assert split["step_ms"] == step["ms_per_step"]
    assert split["convolutions_alone_ms"] == pytest.approx(sum(layer["ms_per_step"] for layer in layers), abs=0.02)
    assert split["step_without_convolutions_ms"] > 0
    assert split["convolutions_in_step_ms"] == pytest.approx(
        split["step_ms"] - split["step_without_convolutions_ms"], abs=0.02
    )


def test_one_sitting_measures_each_compute_dtype_against_the_float32_limit(flop_efficiency, capsys):
    flop_efficiency.main(["--configs=cnn", "--compute_dtype=float32,bfloat16", "--steps=4", "--matmul_seconds=0.2"])
    machine, *rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert machine["cpu"] and isinstance(machine["flags"], list) and machine["matmul_gflops"] > 0
    assert [row["compute_dtype"] for row in rows] == ["float32", "bfloat16"]
    limit_ms = rows[0]["flop_limit_ms_per_step"]
    for row in rows:
        assert row["train_mflop_per_image"] == rows[0]["train_mflop_per_image"]  # the same products, counted alike
        assert row["flop_limit_ms_per_step"] == limit_ms  # both against the float32 rate
        assert row["ratio"] == pytest.approx(row["ms_per_step"] / limit_ms, abs=0.01)
        assert row["epoch_images"] == 48_000  # 750 steps of 64: the study's training split
        assert row["epoch_seconds"] == pytest.approx(750 * row["ms_per_step"] / 1000, abs=0.1)
        assert row["epoch_limit_seconds"] == pytest.approx(750 * limit_ms / 1000, abs=0.1)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--configs=cnn,vgg_bnn"], "--configs=vgg_bnn: there is no configs/vgg_bnn.py"),
        (["--configs=linear_svm"], "--configs=linear_svm is not a CNN's config"),
        (["--compute_dtype=float32,bf16"], "'bf16' is not float32 or bfloat16"),
        (["--matmul_seconds=0"], "--matmul_seconds above 0"),
    ],
)
def test_bad_arguments_stop_before_anything_is_timed(flop_efficiency, capsys, args, says):
    with pytest.raises(SystemExit) as stop:
        flop_efficiency.main(args)
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == "" and says in err
