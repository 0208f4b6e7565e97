"""models.py: the study's architecture, its parameter count, pooling and dropout behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import model_logits

from fmnist_jax import models, timing
from fmnist_jax.errors import ConfigError

# A narrow VGG-BN with the hidden layer (the narrow model of tests/test_recipe.py and tests/test_precision.py too):
# built here by one compiled initialisation that every seed runs.
NARROW_VGG = {"widths": (8, 16, 16), "head_width": 32}


@pytest.fixture(scope="module")
def model():
    return models.create_model("seed_cnn", seed=0)


@pytest.mark.heavy
def test_parameter_count_is_the_studys(model):
    assert models.count_params(model) == 438_026


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["seed_cnn", "vgg_bn"])
def test_the_jitted_initialisation_gives_the_layer_by_layer_bits(name):
    shape = NARROW_VGG if name == "vgg_bn" else {}
    jitted = nnx.state(models.create_model(name, seed=5, **shape))
    plain = nnx.state(models.MODELS[name](rngs=nnx.Rngs(params=5), **shape))
    assert jax.tree.structure(jitted) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)


def test_layer_shapes_follow_the_study(model):
    shapes = jax.tree.map(lambda p: p.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert shapes["conv1"]["kernel"] == (3, 3, 1, 64)
    assert shapes["conv2"]["kernel"] == (3, 3, 64, 128)
    assert shapes["conv3"]["kernel"] == (3, 3, 128, 256)
    assert shapes["dense1"]["kernel"] == (256, 256)
    assert shapes["dense2"]["kernel"] == (256, 10)
    assert model.dropout_rates == (0.25, 0.25, 0.4, 0.3)


def test_biases_start_at_zero_and_kernels_glorot_uniform(model):
    for name in ("conv1", "conv2", "conv3", "dense1", "dense2"):
        layer = getattr(model, name)
        assert float(jnp.abs(layer.bias[...]).max()) == 0.0, name
        kernel = np.asarray(layer.kernel[...])
        *window, fan_in, fan_out = kernel.shape
        receptive = int(np.prod(window))  # 3x3 for the convolutions, 1 for the dense layers
        limit = np.sqrt(6 / (receptive * (fan_in + fan_out)))  # the Glorot-uniform bound
        # uniform on [-limit, limit]: bounded, and its standard deviation limit / sqrt(3) (conv1 has 576 draws)
        assert kernel.max() <= limit and kernel.min() >= -limit, name
        assert kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.1), name


@pytest.mark.heavy
def test_logits_shape_and_seeded_init():
    x = np.ones((8, 28, 28, 1), np.float32)
    a, b = models.create_model("seed_cnn", seed=1), models.create_model("seed_cnn", seed=1)
    c = models.create_model("seed_cnn", seed=2)
    assert model_logits(a, x).shape == (8, 10)
    np.testing.assert_array_equal(model_logits(a, x), model_logits(b, x))
    assert not np.allclose(model_logits(a, x), model_logits(c, x))


@pytest.mark.heavy
def test_dropout_only_with_a_key(model):
    x = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
    np.testing.assert_array_equal(model_logits(model, x), model_logits(model, x))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(model_logits(model, x, k1), model_logits(model, x, k1))
    assert not np.allclose(model_logits(model, x, k1), model_logits(model, x, k2))
    assert not np.allclose(model_logits(model, x, k1), model_logits(model, x))


def pool(y):
    return nnx.max_pool(y, (2, 2), (2, 2), "VALID")


class FlaxReferenceCNN(nnx.Module):
    """The study's CNN written with Flax's own layers, in the study's order: conv, activation, pool."""

    def __init__(self, cnn: models.SeedCNN):
        self.cnn = cnn

    def __call__(self, x):
        c = self.cnn
        x = pool(jax.nn.leaky_relu(c.conv1(x), 0.1))
        x = pool(jax.nn.elu(c.conv2(x), 0.1))
        x = pool(jax.nn.leaky_relu(c.conv3(x), 0.1))
        return c.dense2(jax.nn.elu(c.dense1(x.reshape(x.shape[0], -1)), 0.1))


def cross_entropy(logits, labels):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), labels])


@nnx.jit
def training_logits_and_gradients(model, x, labels):
    """The training form's logits (a key, so dropout at the model's rates) and the parameter gradients of their
    cross-entropy, as one jitted program."""
    logits = model(x, dropout_key=jax.random.key(0))
    return logits, nnx.grad(lambda m: cross_entropy(m(x, dropout_key=jax.random.key(0)), labels))(model)


@nnx.jit
def reference_logits_and_gradients(reference, x, labels):
    """The same for the plain formulation (no dropout), as another jitted program."""
    return reference(x), nnx.grad(lambda r: cross_entropy(r(x), labels))(reference)


@pytest.mark.heavy
@pytest.mark.parametrize("conv", ["auto", "im2col", "xla"])
def test_fast_layers_compute_what_flax_layers_compute(conv):
    """Training form (a key, dropout rates set to 0) and evaluation form (no key): the logits of the plain
    Flax formulation, and the training form's parameter gradients equal autodiff of the plain formulation."""
    model = models.create_model("seed_cnn", seed=3, conv=conv)
    model.dropout_rates = (0.0,) * 4
    reference = FlaxReferenceCNN(model)
    x, labels = np.random.default_rng(4).random((8, 28, 28, 1), np.float32), np.arange(8) % 10
    train, grads = training_logits_and_gradients(model, x, labels)
    ref, ref_grads = reference_logits_and_gradients(reference, x, labels)
    np.testing.assert_allclose(train, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model_logits(model, x), ref, rtol=1e-5, atol=1e-6)
    flat = dict(nnx.to_flat_state(nnx.state(grads, nnx.Param)))
    ref_flat = {key[1:]: v for key, v in nnx.to_flat_state(nnx.state(ref_grads, nnx.Param))}  # drop "cnn"
    assert set(flat) == set(ref_flat) and len(flat) == 10
    # Each gradient within 5e-5 of the reference in norm: summing in other orders moved none by more than 1.3e-6
    # (AVX-512 and AVX2 alike); one element off by its typical size moves even conv3's 294,912 by 1.8e-3.
    for key, g in flat.items():
        ref = np.asarray(ref_flat[key][...], np.float64)
        off = np.linalg.norm(np.asarray(g[...], np.float64) - ref) / np.linalg.norm(ref)
        np.testing.assert_allclose(off, 0.0, atol=5e-5, err_msg=str(key))


def test_unknown_conv_implementation_is_refused():
    with pytest.raises(ValueError, match="conv='cudnn' is not one of"):
        models.create_model("seed_cnn", seed=0, conv="cudnn")


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"config.model.name='resnet' is not a known model.*seed_cnn"):
        models.create_model("resnet", seed=0)


def test_a_stage_without_a_convolution_is_refused_naming_both_fields():
    with pytest.raises(ConfigError, match=r"^config\.model\.widths=\(8, 8\) and config\.model\.depths=\(1, 0\) must"):
        models.VGGBatchNorm(widths=(8, 8), depths=(1, 0), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("model", [models.SeedCNN, models.VGGBatchNorm])
def test_an_unknown_compute_dtype_is_refused_by_each_model_naming_the_ones_known(model):
    with pytest.raises(
        ConfigError, match=r"^config\.compute_dtype='float16' must be one of \('float32', 'bfloat16'\)\.$"
    ):
        model(compute_dtype="float16", rngs=nnx.Rngs(0))


@pytest.mark.heavy
def test_every_seed_of_a_model_runs_one_compiled_initialisation():
    first = nnx.state(models.create_model("vgg_bn", seed=3, **NARROW_VGG), nnx.Param)
    with timing.compile_clock() as clock:
        second = nnx.state(models.create_model("vgg_bn", seed=4, **NARROW_VGG), nnx.Param)
    assert clock.count == 0  # the seed is the program's argument: seed 4 runs seed 3's program
    kernels = [(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True) if a.ndim > 1]
    assert kernels and not any(np.array_equal(a, b) for a, b in kernels)
