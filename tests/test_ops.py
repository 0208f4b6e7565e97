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


def normal(rng, shape):
    """Standard normal float32 values drawn on the host (jax.random compiles a program for every new shape)."""
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


@functools.partial(jax.jit, static_argnums=0)
def values_and_vjps(fns, args, cotangent):
    """For each function of `fns`: fn(*args), and the gradients of <fn(*args), cotangent> with respect to each of
    `args`; jitted, all in one program: one compilation instead of one per operation."""
    results = []
    for fn in fns:
        y, pullback = jax.vjp(fn, *args)
        results.append((y, pullback(cotangent)))
    return results


@pytest.mark.heavy
@pytest.mark.parametrize(
    "x_shape,k_shape", [((2, 28, 28, 1), (3, 3, 1, 4)), ((3, 13, 13, 5), (3, 3, 5, 7)), ((2, 5, 6, 3), (2, 3, 3, 2))]
)
def test_im2col_convolution_equals_xla_convolution_with_gradients(x_shape, k_shape):
    rng = np.random.default_rng(0)
    x, kernel = normal(rng, x_shape), normal(rng, k_shape)
    np.testing.assert_array_equal(ops.conv2d_valid(x, kernel, "xla"), lax_conv(x, kernel))
    out_shape = jax.eval_shape(lax_conv, x, kernel).shape
    cotangent = normal(rng, out_shape)
    impls = ("im2col", "taps")
    fns = (lax_conv, *(functools.partial(ops.conv2d_valid, impl=impl) for impl in impls))
    (ref_y, ref_grads), *results = values_and_vjps(fns, (x, kernel), cotangent)
    for impl, (y, grads) in zip(impls, results, strict=True):
        np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5, err_msg=impl)
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=impl)


def test_auto_convolution_is_patches_or_taps_for_cpu_training_only():
    assert ops.resolve_conv("auto", "cpu") == ops.resolve_conv("auto", "cpu", in_channels=1) == "im2col"
    # bfloat16 products over several channels: tap by tap; the one-channel first layer keeps its patches
    assert ops.resolve_conv("auto", "cpu", in_channels=64, mixed=True) == "taps"
    assert ops.resolve_conv("auto", "cpu", in_channels=1, mixed=True) == "im2col"
    assert ops.resolve_conv("auto", "cpu", training=False, in_channels=64, mixed=True) == "xla"
    assert ops.resolve_conv("auto", "gpu", in_channels=64, mixed=True) == "xla"
    assert ops.resolve_conv("auto", "cpu", training=False, in_channels=64) == "xla"
    assert ops.resolve_conv("auto", "cpu", training=False, in_channels=1) == "taps"
    assert ops.resolve_conv("auto", "gpu", training=False, in_channels=1) == "xla"
    assert ops.resolve_conv("auto", "gpu") == ops.resolve_conv("auto", "tpu") == "xla"
    assert ops.resolve_conv("xla", "cpu") == "xla" and ops.resolve_conv("im2col", "gpu", training=False) == "im2col"


@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (2, 11, 11, 4), (1, 3, 3, 5)])
def test_max_pool_matches_flax(shape):
    x = normal(np.random.default_rng(0), shape)
    np.testing.assert_array_equal(ops.max_pool_2x2(x), nnx.max_pool(x, (2, 2), (2, 2), "VALID"))


ACTS = [models.leaky_relu, models.elu]


@pytest.mark.heavy
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (2, 11, 11, 4), (1, 3, 3, 5)])
def test_pool_bias_act_equals_activation_then_pool_with_gradients(act, shape):
    rng = np.random.default_rng(1)
    z, bias = normal(rng, shape), normal(rng, shape[-1:])

    def fast(z, b):
        return ops.pool_bias_act(act, z, b)

    def reference(z, b):
        return nnx.max_pool(act(z + b), (2, 2), (2, 2), "VALID")

    y = fast(z, bias)
    np.testing.assert_array_equal(y, reference(z, bias))  # bitwise, op by op: act and + are monotone
    cotangent = normal(rng, y.shape)
    (_, (dz, db)), (_, (ref_dz, ref_db)) = values_and_vjps((fast, reference), (z, bias), cotangent)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-6)
    dz = np.asarray(dz)
    h, w = shape[1] // 2 * 2, shape[2] // 2 * 2
    assert np.abs(dz[:, h:]).sum() + np.abs(dz[:, :, w:]).sum() == 0.0  # the dropped odd edge
    assert np.count_nonzero(dz) == y.size  # one element per window gets the gradient


def test_pool_gradient_goes_to_the_first_of_tied_elements():
    z = np.zeros((1, 4, 4, 1), np.float32)
    z[0, 3, 3, 0] = 1.0  # three all-zero windows, one with a single max
    dz = jax.jit(jax.grad(lambda z: ops.pool_bias_act(models.leaky_relu, z, jnp.zeros(1)).sum()))(z)[0, :, :, 0]
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 2] = expected[2, 0] = expected[3, 3] = 1.0  # top-left of tied windows
    np.testing.assert_array_equal(dz, expected)


@pytest.mark.heavy
@pytest.mark.parametrize("shape", [(2, 28, 28, 4), (3, 7, 7, 6), (1, 3, 3, 5)])
def test_pool_affine_relu_equals_affine_relu_then_pool_with_gradients(shape):
    rng = np.random.default_rng(2)
    z = normal(rng, shape)
    scale = rng.standard_normal(shape[-1:], dtype=np.float32)
    scale[:2] = -0.7, 1.3  # both signs, always
    scale, shift = jnp.asarray(scale), jnp.asarray(0.5 * rng.standard_normal(shape[-1:], dtype=np.float32))

    def reference(z, s, b):
        return nnx.max_pool(jax.nn.relu(z * s + b), (2, 2), (2, 2), "VALID")

    y = ops.pool_affine_relu(z, scale, shift)
    np.testing.assert_array_equal(y, reference(z, scale, shift))  # bitwise, op by op: the same arithmetic
    cotangent = normal(rng, y.shape)
    (_, grads), (_, ref_grads) = values_and_vjps((ops.pool_affine_relu, reference), (z, scale, shift), cotangent)
    # z's gradient takes each cotangent through one product: equal to rounding. The parameters' are sums over the
    # active pooled positions, in another order in each form; a float32 sum's rounding grows with the magnitudes it
    # sums, not with its result (which cancels). Allowed: 4 roundings of those magnitudes, a multiple set from the
    # largest error seen (0.84 of one, AVX-512 and AVX2 alike), not a worst case (that grows with the terms' count).
    summed = np.abs(cotangent).sum((0, 1, 2)).max()  # every position's: at least the shift's terms (the scale's / |z|)
    bounds = {"z": (1e-5, 1e-6), "scale": (0, 4 * 2**-24 * summed * np.abs(z).max()), "shift": (0, 4 * 2**-24 * summed)}
    for g, r, name in zip(grads, ref_grads, ("z", "scale", "shift"), strict=True):
        np.testing.assert_allclose(g, r, *bounds[name], err_msg=name)
    assert np.count_nonzero(grads[0]) == np.count_nonzero(y)  # one element of each active window


def test_pool_affine_relu_picks_the_first_of_tied_window_minima_under_a_negative_scale():
    z = np.ones((1, 4, 4, 1), np.float32)
    z[0, 3, 3, 0] = -1.0  # three all-one windows, one with a single minimum
    dz = jax.jit(jax.grad(lambda z: ops.pool_affine_relu(z, -jnp.ones(1), jnp.full((1,), 2.0)).sum()))(z)
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 2] = expected[2, 0] = expected[3, 3] = -1.0  # d relu(2 - z) / dz
    np.testing.assert_array_equal(dz[0, :, :, 0], expected)


# Dropout as training runs it, inside a jitted program (the rate is static: it decides what the program is).
dropout_jitted = jax.jit(ops.dropout, static_argnums=1)


@pytest.mark.parametrize("rate", [0.25, 0.3, 0.4])
def test_dropout_keeps_the_right_fraction_and_scales(rate):
    x = np.ones((64, 40, 40, 8), np.float32)  # 819,200 elements: the kept fraction's std is ~0.0005
    y = np.asarray(dropout_jitted(x, rate, jax.random.key(7)))
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 0.003
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / (1 - rate)], rtol=1e-6)
    # no structure along any axis: each channel, row and image keeps about the same fraction
    for axis in [(0, 1, 2), (0, 2, 3), (1, 2, 3)]:
        assert np.abs(kept.mean(axis=axis) - (1 - rate)).max() < 0.03


def test_dropout_masks_are_independent_across_keys_and_neighbours():
    x = np.ones((64, 13, 13, 64), np.float32)
    a, b, again = (np.asarray(dropout_jitted(x, 0.5, jax.random.key(k))).ravel() != 0 for k in (1, 2, 1))
    assert np.array_equal(a, again)
    assert abs((a == b).mean() - 0.5) < 0.005  # independent masks agree half the time
    for lag in (1, 64, 13 * 64):  # next channel, next column, next row
        assert abs(np.corrcoef(a[:-lag], a[lag:])[0, 1]) < 0.01


def test_dropout_is_identity_without_a_key_or_rate_and_refuses_bad_rates():
    x = normal(np.random.default_rng(0), (4, 5))
    np.testing.assert_array_equal(ops.dropout(x, 0.4, None), x)
    np.testing.assert_array_equal(ops.dropout(x, 0.0, jax.random.key(1)), x)
    with pytest.raises(ValueError, match=r"rate 1\.0 must be in"):
        ops.dropout(x, 1.0, jax.random.key(1))
