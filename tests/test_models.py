"""models.py: the study's architecture, its parameter count, pooling and dropout behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmnist_jax import models
from fmnist_jax.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    return models.create_model("seed_cnn", seed=0)


def test_parameter_count_is_the_studys(model):
    assert models.count_params(model) == 438_026


def test_layer_shapes_follow_the_study(model):
    shapes = jax.tree.map(lambda p: p.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert shapes["conv1"]["kernel"] == (3, 3, 1, 64)
    assert shapes["conv2"]["kernel"] == (3, 3, 64, 128)
    assert shapes["conv3"]["kernel"] == (3, 3, 128, 256)
    assert shapes["dense1"]["kernel"] == (256, 256)
    assert shapes["dense2"]["kernel"] == (256, 10)
    assert [model.drop1.rate, model.drop2.rate, model.drop3.rate, model.drop4.rate] == [0.25, 0.25, 0.4, 0.3]


def test_biases_start_at_zero_and_kernels_glorot_uniform(model):
    assert float(jnp.abs(model.conv2.bias[...]).max()) == 0.0
    limit = np.sqrt(6 / (3 * 3 * 64 + 3 * 3 * 128))  # Glorot-uniform bound for conv2
    kernel = np.asarray(model.conv2.kernel[...])
    assert kernel.max() <= limit and kernel.min() >= -limit and kernel.std() > limit / 3


def test_logits_shape_and_seeded_init():
    x = jnp.ones((5, 28, 28, 1))
    a, b = models.create_model("seed_cnn", seed=1), models.create_model("seed_cnn", seed=1)
    c = models.create_model("seed_cnn", seed=2)
    assert a(x).shape == (5, 10)
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.allclose(a(x), c(x))


def test_dropout_only_with_a_key(model):
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    np.testing.assert_array_equal(model(x), model(x))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(model(x, dropout_key=k1), model(x, dropout_key=k1))
    assert not np.allclose(model(x, dropout_key=k1), model(x, dropout_key=k2))
    assert not np.allclose(model(x, dropout_key=k1), model(x))


@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (2, 11, 11, 4), (1, 3, 3, 5)])
def test_max_pool_matches_flax(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(models.max_pool_2x2(x), nnx.max_pool(x, (2, 2), (2, 2), "VALID"))


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"config.model.name='resnet' is not a known model.*seed_cnn"):
        models.create_model("resnet", seed=0)
