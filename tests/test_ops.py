"""ops.py: each fast layer against its plain formulation, values and gradients; dropout's mask statistics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmnist_jax import models, ops


def lax_conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.heavy
@pytest.mark.parametrize(
    "x_shape,k_shape", [((2, 28, 28, 1), (3, 3, 1, 4)), ((3, 13, 13, 5), (3, 3, 5, 7)), ((2, 5, 6, 3), (2, 3, 3, 2))]
)
def test_im2col_convolution_equals_xla_convolution_with_gradients(x_shape, k_shape):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x, kernel = jax.random.normal(kx, x_shape), jax.random.normal(kk, k_shape)
    np.testing.assert_array_equal(ops.conv2d_valid(x, kernel, "xla"), lax_conv(x, kernel))
    ref_grads = jax.vjp(lax_conv, x, kernel)[1]
    for impl in ("im2col", "taps"):
        y = ops.conv2d_valid(x, kernel, impl)
        np.testing.assert_allclose(y, lax_conv(x, kernel), rtol=1e-5, atol=1e-5, err_msg=impl)
        cotangent = jax.random.normal(kg, y.shape)
        grads = jax.vjp(functools.partial(ops.conv2d_valid, impl=impl), x, kernel)[1](cotangent)
        for g, r in zip(grads, ref_grads(cotangent), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=impl)


def test_auto_convolution_is_im2col_for_cpu_training_only():
    assert ops.resolve_conv("auto", "cpu") == ops.resolve_conv("auto", "cpu", in_channels=1) == "im2col"
    assert ops.resolve_conv("auto", "cpu", training=False, in_channels=64) == "xla"
    assert ops.resolve_conv("auto", "cpu", training=False, in_channels=1) == "taps"
    assert ops.resolve_conv("auto", "gpu", training=False, in_channels=1) == "xla"
    assert ops.resolve_conv("auto", "gpu") == ops.resolve_conv("auto", "tpu") == "xla"
    assert ops.resolve_conv("xla", "cpu") == "xla" and ops.resolve_conv("im2col", "gpu", training=False) == "im2col"


@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (2, 11, 11, 4), (1, 3, 3, 5)])
def test_max_pool_matches_flax(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(ops.max_pool_2x2(x), nnx.max_pool(x, (2, 2), (2, 2), "VALID"))


ACTS = [models.leaky_relu, models.elu]


@pytest.mark.heavy
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (2, 11, 11, 4), (1, 3, 3, 5)])
def test_pool_bias_act_equals_activation_then_pool_with_gradients(act, shape):
    kz, kb, kg = jax.random.split(jax.random.key(1), 3)
    z, bias = jax.random.normal(kz, shape), jax.random.normal(kb, shape[-1:])

    def reference(z, b):
        return nnx.max_pool(act(z + b), (2, 2), (2, 2), "VALID")

    y = ops.pool_bias_act(act, z, bias)
    np.testing.assert_array_equal(y, reference(z, bias))  # bitwise: act and + are monotone
    cotangent = jax.random.normal(kg, y.shape)
    dz, db = jax.vjp(lambda z, b: ops.pool_bias_act(act, z, b), z, bias)[1](cotangent)
    ref_dz, ref_db = jax.vjp(reference, z, bias)[1](cotangent)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-6)
    h, w = shape[1] // 2 * 2, shape[2] // 2 * 2
    assert float(jnp.abs(dz[:, h:]).sum() + jnp.abs(dz[:, :, w:]).sum()) == 0.0  # the dropped odd edge
    assert int(jnp.count_nonzero(dz)) == y.size  # one element per window gets the gradient


def test_pool_gradient_goes_to_the_first_of_tied_elements():
    z = jnp.zeros((1, 4, 4, 1)).at[0, 3, 3, 0].set(1.0)  # three all-zero windows, one with a single max
    dz = jax.grad(lambda z: ops.pool_bias_act(models.leaky_relu, z, jnp.zeros(1)).sum())(z)[0, :, :, 0]
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 2] = expected[2, 0] = expected[3, 3] = 1.0  # top-left of tied windows
    np.testing.assert_array_equal(dz, expected)


@pytest.mark.heavy
@pytest.mark.parametrize("shape", [(2, 28, 28, 4), (3, 7, 7, 6), (1, 3, 3, 5)])
def test_pool_affine_relu_equals_affine_relu_then_pool_with_gradients(shape):
    kz, ks, kb, kg = jax.random.split(jax.random.key(2), 4)
    z = jax.random.normal(kz, shape)
    scale = jax.random.normal(ks, shape[-1:]).at[0].set(-0.7).at[1].set(1.3)  # both signs, always
    shift = jax.random.normal(kb, shape[-1:]) * 0.5

    def reference(z, s, b):
        return nnx.max_pool(jax.nn.relu(z * s + b), (2, 2), (2, 2), "VALID")

    y = ops.pool_affine_relu(z, scale, shift)
    np.testing.assert_array_equal(y, reference(z, scale, shift))  # bitwise: the same arithmetic on the same element
    cotangent = jax.random.normal(kg, y.shape)
    grads = jax.vjp(ops.pool_affine_relu, z, scale, shift)[1](cotangent)
    ref_grads = jax.vjp(reference, z, scale, shift)[1](cotangent)
    for g, r, name in zip(grads, ref_grads, ("z", "scale", "shift"), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6, err_msg=name)
    assert int(jnp.count_nonzero(grads[0])) == int(jnp.count_nonzero(y))  # one element of each active window


def test_pool_affine_relu_picks_the_first_of_tied_window_minima_under_a_negative_scale():
    z = jnp.ones((1, 4, 4, 1)).at[0, 3, 3, 0].set(-1.0)  # three all-one windows, one with a single minimum
    dz = jax.grad(lambda z: ops.pool_affine_relu(z, -jnp.ones(1), jnp.full((1,), 2.0)).sum())(z)[0, :, :, 0]
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 2] = expected[2, 0] = expected[3, 3] = -1.0  # d relu(2 - z) / dz
    np.testing.assert_array_equal(dz, expected)


@pytest.mark.parametrize("rate", [0.25, 0.3, 0.4])
def test_dropout_keeps_the_right_fraction_and_scales(rate):
    x = jnp.ones((64, 40, 40, 8))  # 819,200 elements: the kept fraction's std is ~0.0005
    y = ops.dropout(x, rate, jax.random.key(7))
    kept = np.asarray(y != 0)
    assert abs(kept.mean() - (1 - rate)) < 0.003
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / (1 - rate)], rtol=1e-6)
    # no structure along any axis: each channel, row and image keeps about the same fraction
    for axis in [(0, 1, 2), (0, 2, 3), (1, 2, 3)]:
        assert np.abs(kept.mean(axis=axis) - (1 - rate)).max() < 0.03


def test_dropout_masks_are_independent_across_keys_and_neighbours():
    x = jnp.ones((64, 13, 13, 64))
    a = np.asarray(ops.dropout(x, 0.5, jax.random.key(1)) != 0).ravel()
    b = np.asarray(ops.dropout(x, 0.5, jax.random.key(2)) != 0).ravel()
    assert np.array_equal(a, np.asarray(ops.dropout(x, 0.5, jax.random.key(1)) != 0).ravel())
    assert abs((a == b).mean() - 0.5) < 0.005  # independent masks agree half the time
    for lag in (1, 64, 13 * 64):  # next channel, next column, next row
        assert abs(np.corrcoef(a[:-lag], a[lag:])[0, 1]) < 0.01


def test_dropout_is_identity_without_a_key_or_rate_and_refuses_bad_rates():
    x = jax.random.normal(jax.random.key(0), (4, 5))
    np.testing.assert_array_equal(ops.dropout(x, 0.4, None), x)
    np.testing.assert_array_equal(ops.dropout(x, 0.0, jax.random.key(1)), x)
    with pytest.raises(ValueError, match=r"rate 1\.0 must be in"):
        ops.dropout(x, 1.0, jax.random.key(1))
