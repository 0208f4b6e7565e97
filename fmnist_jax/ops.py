"""The CNN's layers as fast JAX operations: the same maths as Flax's layers, cheaper on XLA:CPU.

Measured with `python -m benchmarks` on a 2-core CPU (docs/performance.md); each is chosen because the
benchmark showed it, and each is tested against the plain formulation in tests/test_ops.py:

- `conv2d_valid` as one matrix product over (kh*kw*C)-wide patches ("im2col") when training on CPU.
  XLA:CPU multiplies matrices at ~180 GFLOP/s here but runs the backward convolutions at ~85-130, and the
  weight gradient reuses the patches. For a forward pass alone XLA's convolution is faster, except for the
  one-channel first layer, which as nine multiply-adds ("taps") fuses with its activation and pooling.
  With bfloat16 products over several input channels (`taps_mixed`), one product per kernel position
  instead: its forward pass and weight gradient build no patch matrix.
- `pool_bias_act` = max_pool_2x2(act(z + bias)) for training, computed as act(max_pool_2x2(z) + bias): the
  same values, since the bias and both activations are increasing, with a backward pass that is one select
  per input element instead of the tie-counting mask that autodiff of a max builds. (A forward pass alone
  is faster in the plain order, which the model uses for evaluation.)
- `pool_affine_relu` = max_pool_2x2(relu(z * scale + shift)) for BatchNorm's folded per-channel affine map,
  computed on each window's max or min by the sign of the scale, with the same one-select backward pass.
- `dropout` draws its keep mask from a counter-based hash of (key, element index) instead of threefry,
  which XLA:CPU runs as a loop with copies of its state; the mask is a pure function of the key and the
  element's position in the global batch, so it does not depend on the number of devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "im2col", "xla", "taps")


def resolve_conv(
    impl: str, backend: str | None = None, *, training: bool = True, in_channels: int = 0, mixed: bool = False
) -> str:
    """ "auto" -> for training on CPU "im2col", or "taps" for bfloat16 (`mixed`) products over several input
    channels; for a forward pass alone on CPU "taps" for a single input channel, else "xla"; elsewhere "xla".

    On CPU the patch matrix pays off in float32 training, where the weight gradient reuses it; with bfloat16
    products, which AMX runs at several times the float32 rate, moving the patches costs more than the products,
    so each kernel position multiplies the shifted input (`taps_mixed`; measured on an AMX Xeon, and picked
    on CPUs without AMX too, unmeasured there). A forward pass alone (evaluation, prediction) is faster through
    XLA's convolution, and for the one-channel first layer as nine multiply-adds that fuse with its activation
    and pooling (benchmarks/). On GPU/TPU XLA's convolution libraries beat all.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv={impl!r} is not one of {CONV_IMPLS}")
    if impl != "auto":
        return impl
    if (backend or jax.default_backend()) != "cpu":
        return "xla"
    if training:
        return "taps" if mixed and in_channels > 1 else "im2col"
    return "taps" if in_channels == 1 else "xla"


def training_forms(impl: str, backend: str | None = None, *, mixed: bool = False) -> tuple[str, str]:
    """What `impl` resolves to in training (`resolve_conv`) for a one-channel first layer and for the layers over
    several input channels, which differ on CPU with bfloat16 products (`mixed`)."""
    return tuple(resolve_conv(impl, backend, in_channels=c, mixed=mixed) for c in (1, 2))


def patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """(N, H, W, C) -> (N, H-kh+1, W-kw+1, kh*kw*C): every 'VALID' window, rows then columns then channels."""
    _, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    return jnp.concatenate([x[:, i : i + oh, j : j + ow, :] for i in range(kh) for j in range(kw)], axis=-1)


def is_mixed(compute_dtype: jnp.dtype | None) -> bool:
    """Whether `compute_dtype` asks for lower-precision products (None and float32 do not)."""
    return compute_dtype is not None and jnp.dtype(compute_dtype) != jnp.float32


def conv2d_valid(
    x: jax.Array,
    kernel: jax.Array,
    impl: str = "auto",
    *,
    training: bool = True,
    compute_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """Stride-1 'VALID' convolution of NHWC `x` with an HWIO `kernel` (no bias), as `nnx.Conv` computes it.

    With a lower-precision `compute_dtype` (bfloat16), both operands are cast to it, the products accumulate in
    float32 and the result is rounded to `compute_dtype`; without one, everything stays in the inputs' dtype.
    """
    mixed = is_mixed(compute_dtype)
    impl = resolve_conv(impl, training=training, in_channels=x.shape[-1], mixed=mixed)
    acc = jnp.float32 if mixed else None
    if mixed and impl == "im2col":
        return im2col_mixed(x, kernel, jnp.dtype(compute_dtype))
    if mixed and impl == "taps" and x.shape[-1] > 1:
        return taps_mixed(x, kernel, jnp.dtype(compute_dtype))
    # XLA's convolution takes the cast operands; the one-channel taps multiply elementwise in float32.
    if mixed and impl == "xla":
        x, kernel = x.astype(compute_dtype), kernel.astype(compute_dtype)

    def done(y: jax.Array) -> jax.Array:
        return y.astype(compute_dtype) if mixed else y

    if impl == "xla":
        return done(
            jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=acc
            )
        )
    n, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    oh, ow = h - kh + 1, w - kw + 1
    if impl == "taps":  # the sum over the window of shifted inputs times one kernel position each

        def window(i: int, j: int) -> jax.Array:
            return x[:, i : i + oh, j : j + ow, :]

        def tap(i: int, j: int) -> jax.Array:
            if c == 1:
                return window(i, j) * kernel[i, j, 0]
            return jnp.dot(window(i, j), kernel[i, j], preferred_element_type=acc)

        return done(sum(tap(i, j) for i in range(kh) for j in range(kw)))
    p = patches(x, kh, kw).reshape(n * oh * ow, kh * kw * c)
    return done(jnp.dot(p, kernel.reshape(kh * kw * c, o), preferred_element_type=acc).reshape(n, oh, ow, o))


def patches_t(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """The transposed patch matrix, (kh*kw*C, N*(H-kh+1)*(W-kw+1)), built directly in that layout."""
    n, h, w, c = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    xt = x.transpose(3, 0, 1, 2)  # (C, N, H, W): each window's slice is then a block of rows
    rows = jnp.concatenate([xt[:, :, i : i + oh, j : j + ow] for i in range(kh) for j in range(kw)], axis=0)
    return rows.reshape(kh * kw * c, n * oh * ow)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def im2col_mixed(x: jax.Array, kernel: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The im2col convolution with `dtype` (bfloat16) operands and float32 accumulation, rounded to `dtype`.

    Its backward pass hands XLA:CPU each product in the layout of its fast path: the weight gradient as
    P^T (k, m) . dy with P^T built from the input in that layout (autodiff contracts axis 0 of P and of dy,
    which runs at a third of the bfloat16 rate: docs/history.md#retired-benchmark-scripts), the input gradient as
    dy . W^T, folded back onto the input in float32.
    Both operands are cast inside, so each gradient comes back in its operand's dtype: a float32 input's (the models
    pass it so) is never rounded to `dtype`, nor summed in it over the overlapping windows.
    """
    n, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    oh, ow = h - kh + 1, w - kw + 1
    p = patches(x.astype(dtype), kh, kw).reshape(n * oh * ow, kh * kw * c)
    y = jnp.dot(p, kernel.astype(dtype).reshape(kh * kw * c, o), preferred_element_type=jnp.float32)
    return y.astype(dtype).reshape(n, oh, ow, o)


def _rounded_residuals(x, kernel, dtype):
    """What a mixed convolution's backward pass keeps of its input: the input rounded to `dtype` (half a float32
    input's memory) and an empty array of the input's own dtype, the dtype its gradient must come back in."""
    return x.astype(dtype), kernel, jnp.zeros((0,), x.dtype)


def _im2col_mixed_fwd(x, kernel, dtype):
    return im2col_mixed(x, kernel, dtype), _rounded_residuals(x, kernel, dtype)


def _im2col_mixed_bwd(dtype, residuals, dy):
    xb, kernel, like = residuals
    kh, kw, _, o = kernel.shape
    dy = dy.reshape(-1, o).astype(dtype)
    dk = jnp.dot(patches_t(xb, kh, kw), dy, preferred_element_type=jnp.float32).reshape(kernel.shape)
    dx = _patches_input_grad(dy, kernel, xb.shape, dtype)
    return dx.astype(like.dtype), dk.astype(kernel.dtype)


def _patches_input_grad(dy, kernel, x_shape, dtype):
    """A convolution's input gradient over its patches: dy (m, O) . W^T with `dtype` operands and float32 sums,
    folded back onto the (N, H, W, C) input in float32 (the transpose of `patches`)."""
    n, h, w, c = x_shape
    kh, kw, _, o = kernel.shape
    w_t = (((1,), (1,)), ((), ()))  # dy . W^T: contract the output channels of both
    dp = jax.lax.dot_general(dy, kernel.astype(dtype).reshape(kh * kw * c, o), w_t, preferred_element_type=jnp.float32)
    fold_back = jax.linear_transpose(lambda x: patches(x, kh, kw), jax.ShapeDtypeStruct(x_shape, jnp.float32))
    (dx,) = fold_back(dp.reshape(n, h - kh + 1, w - kw + 1, kh * kw * c))
    return dx


im2col_mixed.defvjp(_im2col_mixed_fwd, _im2col_mixed_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def taps_mixed(x: jax.Array, kernel: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The convolution as one product per kernel position ("tap") of the shifted input, `dtype` (bfloat16)
    operands, float32 accumulation, rounded to `dtype`: the forward pass builds no patch matrix.

    Where bfloat16 products are much faster than the memory traffic around them (AMX: docs/performance.md),
    moving patches in bfloat16 costs more than the products. The backward pass takes the weight gradient tap by
    tap from the input laid out channels first, (C, m) . dy, and the input gradient as one product dy . W^T
    folded back onto the input in float32. `x` may be float32 (the models pass it so): it is cast inside, and its
    gradient comes back in its dtype, so a float32 input's gradient is never rounded to `dtype`.
    """
    n, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    oh, ow = h - kh + 1, w - kw + 1
    xb, kb = x.astype(dtype), kernel.astype(dtype)
    taps = (
        jnp.dot(xb[:, i : i + oh, j : j + ow, :].reshape(n * oh * ow, c), kb[i, j], preferred_element_type=jnp.float32)
        for i in range(kh)
        for j in range(kw)
    )
    return sum(taps).astype(dtype).reshape(n, oh, ow, o)


def _taps_mixed_fwd(x, kernel, dtype):
    return taps_mixed(x, kernel, dtype), _rounded_residuals(x, kernel, dtype)


def _taps_mixed_bwd(dtype, residuals, dy):
    xb, kernel, like = residuals
    n, h, w, c = xb.shape
    kh, kw, _, o = kernel.shape
    oh, ow = h - kh + 1, w - kw + 1
    m = n * oh * ow
    dy = dy.reshape(m, o).astype(dtype)
    xt = xb.transpose(3, 0, 1, 2)  # (C, N, H, W): each tap's input is then (C, m) as it stands
    dk = jnp.stack(
        [
            jnp.dot(xt[:, :, i : i + oh, j : j + ow].reshape(c, m), dy, preferred_element_type=jnp.float32)
            for i in range(kh)
            for j in range(kw)
        ]
    )
    dx = _patches_input_grad(dy, kernel, xb.shape, dtype)
    return dx.astype(like.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


taps_mixed.defvjp(_taps_mixed_fwd, _taps_mixed_bwd)


def dense_mixed(x: jax.Array, kernel: jax.Array, bias: jax.Array, compute_dtype: jnp.dtype) -> jax.Array:
    """x @ kernel + bias in float32, the product's operands cast to the lower-precision `compute_dtype`."""
    y = jnp.dot(x.astype(compute_dtype), kernel.astype(compute_dtype), preferred_element_type=jnp.float32)
    return y + bias


def conv2d_same(
    x: jax.Array,
    kernel: jax.Array,
    impl: str = "auto",
    *,
    training: bool = True,
    compute_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """Stride-1 'SAME' convolution (zero padding, odd kernel): `conv2d_valid` of the padded input."""
    kh, kw = kernel.shape[:2]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"'SAME' padding here needs an odd kernel size, got {kh}x{kw}")
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return conv2d_valid(padded, kernel, impl, training=training, compute_dtype=compute_dtype)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, 'VALID' (an odd last row/column is dropped), as reshape + max.

    The same values as `nnx.max_pool(x, (2, 2), (2, 2))`. For forward passes: training differentiates the
    pooling through `pool_bias_act` or `pool_affine_relu`, never through this (jitted on XLA:CPU, autodiff of
    it inside the whole VGG-BN lost much of the gradient; tests/test_recipe.py).
    """
    return _windows(x).max(axis=(2, 4))


def _windows(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H//2, 2, W//2, 2, C): the 2x2 windows, an odd last row/column dropped."""
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2, :].reshape(n, h // 2, 2, w // 2, 2, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def pool_bias_act(act: Callable[[jax.Array], jax.Array], z: jax.Array, bias: jax.Array) -> jax.Array:
    """max_pool_2x2(act(z + bias)) for an increasing `act`, computed as act(max_pool_2x2(z) + bias).

    Gradient: each window's gradient goes to its largest element, the first in row-major order on ties (as
    TensorFlow's max-pool gradient does; autodiff of `max` would split it between tied elements).
    """
    return act(max_pool_2x2(z) + bias)


def _pool_bias_act_fwd(act, z, bias):
    m = max_pool_2x2(z)
    return act(m + bias), (z, m, bias)


def _pool_bias_act_bwd(act, residuals, dy):
    z, m, bias = residuals
    g = jax.vjp(act, m + bias)[1](dy)[0]
    return _to_window_choice(z, m, g), g.sum(axis=(0, 1, 2)).astype(bias.dtype)  # z may be bfloat16


def _to_window_choice(z: jax.Array, m: jax.Array, g: jax.Array) -> jax.Array:
    """The gradient of 2x2 pooling that picked value `m` from each window of `z`: each window's `g` goes to
    the element equal to `m`, the first in row-major order on ties; zero elsewhere (and on a dropped odd edge)."""
    windows = _windows(z)
    a, b, c = windows[:, :, 0, :, 0], windows[:, :, 0, :, 1], windows[:, :, 1, :, 0]  # top-left, -right, bottom-left
    ta, tb, tc = a == m, b == m, c == m
    zero = jnp.zeros_like(g)
    corners = (
        jnp.where(ta, g, zero),
        jnp.where(tb & ~ta, g, zero),
        jnp.where(tc & ~(ta | tb), g, zero),
        jnp.where(ta | tb | tc, zero, g),
    )
    n, h, w, ch = z.shape
    h2, w2 = h // 2, w // 2
    top, bottom = jnp.stack(corners[:2], axis=3), jnp.stack(corners[2:], axis=3)  # (N, H/2, W/2, 2, C)
    dz = jnp.stack([top, bottom], axis=2).reshape(n, 2 * h2, 2 * w2, ch)
    dz = jnp.pad(dz, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0)))  # the dropped odd edge: zero
    return dz.astype(z.dtype)


pool_bias_act.defvjp(_pool_bias_act_fwd, _pool_bias_act_bwd)


@jax.custom_vjp
def pool_affine_relu(z: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """max_pool_2x2(relu(z * scale + shift)) with per-channel `scale` and `shift` (BatchNorm's affine map with
    the batch statistics folded in), computed on the pooled values: for each channel the window's largest `z`
    where its scale is >= 0, its smallest where the scale is negative (the affine map then reverses the order).

    Returns float32 whatever `z`'s dtype (as BatchNorm with float32 parameters does). Gradient: each window's
    gradient goes to the element it picked, the first in row-major order on ties, as in `pool_bias_act`.
    """
    return _pool_affine_relu_fwd(z, scale, shift)[0]


def _pool_affine_relu_fwd(z, scale, shift):
    windows = _windows(z)
    m = jnp.where(scale >= 0, windows.max(axis=(2, 4)), windows.min(axis=(2, 4)))
    u = m.astype(jnp.float32) * scale + shift
    return jax.nn.relu(u), (z, m, u, scale)


def _pool_affine_relu_bwd(residuals, dy):
    z, m, u, scale = residuals
    g = jnp.where(u > 0, dy, jnp.zeros_like(dy))
    dscale = (g * m.astype(jnp.float32)).sum(axis=(0, 1, 2))
    return _to_window_choice(z, m, g * scale), dscale.astype(scale.dtype), g.sum(axis=(0, 1, 2)).astype(scale.dtype)


pool_affine_relu.defvjp(_pool_affine_relu_fwd, _pool_affine_relu_bwd)


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every input bit changes each output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 bits for every element of `shape`: a hash of (key, the element's row-major index)."""
    size = 1
    for d in shape:
        size *= d
    if size >= 2**32:
        raise ValueError(f"dropout over {size} elements: at most 2**32 - 1 are supported")
    k = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    for axis, d in enumerate(shape):
        index = index * jnp.uint32(d) + jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    return _fmix32(_fmix32(index * jnp.uint32(0x9E3779B9) + k[0]) ^ k[1])


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each element with probability `rate`, scale the rest by 1/(1-rate); identity
    without a key (evaluation), as `nnx.Dropout` does."""
    if key is None or rate == 0.0:
        return x
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate} must be in [0, 1)")
    keep = 1.0 - rate
    threshold = jnp.uint32(min(round(keep * 2**32), 2**32 - 1))
    return jnp.where(hash_bits(key, x.shape) < threshold, x / keep, jnp.zeros_like(x))
