"""Flax NNX models and the name -> model registry that `config.model.name` selects from."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fmnist_jax import ops
from fmnist_jax.errors import ConfigError

# Keras defaults, which the study used: Glorot-uniform kernels, zero biases.
KERNEL_INIT = nnx.initializers.glorot_uniform()


def leaky_relu(x: jax.Array) -> jax.Array:
    """LeakyReLU(alpha=0.1), as the study used."""
    return jax.nn.leaky_relu(x, 0.1)


def elu(x: jax.Array) -> jax.Array:
    """ELU(alpha=0.1), as the study used."""
    return jax.nn.elu(x, 0.1)


COMPUTE_DTYPES = ("float32", "bfloat16")


def mixed_dtype(compute_dtype: str) -> jnp.dtype | None:
    """The products' dtype when it is lower than float32 (parameters always stay float32), else None."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"config.compute_dtype={compute_dtype!r} must be one of {COMPUTE_DTYPES}.")
    return None if compute_dtype == "float32" else jnp.dtype(compute_dtype)


def apply_dense(layer: nnx.Linear, x: jax.Array, compute_dtype: jnp.dtype | None) -> jax.Array:
    """`layer(x)`, or with a lower-precision `compute_dtype` its product in that dtype, accumulated in float32."""
    if compute_dtype is None:
        return layer(x)
    return ops.dense_mixed(x, layer.kernel[...], layer.bias[...], compute_dtype)


def batch_norm_relu_pool(norm: nnx.BatchNorm, z: jax.Array) -> jax.Array:
    """max_pool_2x2(relu(norm(z))) in training, BatchNorm's batch statistics and running-average update as
    `nnx.BatchNorm` computes them, with the normalisation and ReLU applied to the pooled values only
    (`ops.pool_affine_relu`): three full-resolution elementwise passes and the max's tie mask fewer."""
    zf = z.astype(jnp.float32)
    mean = zf.mean(axis=(0, 1, 2))
    var = jnp.maximum(0.0, (zf * zf).mean(axis=(0, 1, 2)) - mean * mean)  # flax's fast variance
    momentum = norm.momentum
    norm.mean[...] = jax.lax.stop_gradient(momentum * norm.mean[...] + (1 - momentum) * mean)
    norm.var[...] = jax.lax.stop_gradient(momentum * norm.var[...] + (1 - momentum) * var)
    scale = norm.scale[...] * jax.lax.rsqrt(var + norm.epsilon)
    return ops.pool_affine_relu(z, scale, norm.bias[...] - mean * scale)


class SeedCNN(nnx.Module):
    """The study's CNN: three conv blocks and a dense head, 438,026 parameters for 28x28x1 inputs."""

    def __init__(self, *, num_classes: int = 10, conv: str = "auto", compute_dtype: str = "float32", rngs: nnx.Rngs):
        ops.resolve_conv(conv)  # an unknown implementation fails here, not at the first call
        self.compute_dtype = mixed_dtype(compute_dtype)
        # The Conv layers hold the kernels and biases; __call__ applies them through `ops` (same maths).
        self.conv1, self.conv2, self.conv3 = (
            nnx.Conv(i, o, (3, 3), padding="VALID", kernel_init=KERNEL_INIT, rngs=rngs)
            for i, o in ((1, 64), (64, 128), (128, 256))
        )
        self.dense1 = nnx.Linear(256, 256, kernel_init=KERNEL_INIT, rngs=rngs)
        self.dense2 = nnx.Linear(256, num_classes, kernel_init=KERNEL_INIT, rngs=rngs)
        self.dropout_rates = (0.25, 0.25, 0.4, 0.3)
        self.conv = conv

    def _block(self, layer: nnx.Conv, x: jax.Array, act: Callable[[jax.Array], jax.Array], training: bool) -> jax.Array:
        """max_pool_2x2(act(conv(x) + bias)) with `layer`'s kernel and bias, in the form fastest for the task:
        ops.pool_bias_act's cheap backward pass when training, the plain order for a forward pass alone."""
        z = ops.conv2d_valid(x, layer.kernel[...], self.conv, training=training, compute_dtype=self.compute_dtype)
        if training:
            return ops.pool_bias_act(act, z, layer.bias[...])
        return ops.max_pool_2x2(act(z + layer.bias[...]))

    def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits for images `x` (N, 28, 28, 1) in [0, 1].

        With a `dropout_key` (training) dropout is applied and the layers take their training form; without
        one (evaluation) the forward-only form. Both compute the same function (tests/test_models.py).
        """
        training = dropout_key is not None
        keys = list(jax.random.split(dropout_key, 4)) if training else [None] * 4
        r = self.dropout_rates
        x = ops.dropout(self._block(self.conv1, x, leaky_relu, training), r[0], keys[0])
        x = ops.dropout(self._block(self.conv2, x, elu, training), r[1], keys[1])
        x = ops.dropout(self._block(self.conv3, x, leaky_relu, training), r[2], keys[2])
        x = x.reshape(x.shape[0], -1)
        x = ops.dropout(elu(apply_dense(self.dense1, x, self.compute_dtype)), r[3], keys[3])
        return apply_dense(self.dense2, x, self.compute_dtype)


class VGGBatchNorm(nnx.Module):
    """Beyond the study: a VGG-style CNN with BatchNorm after every 'SAME' 3x3 convolution.

    Stages of `depths[i]` convolutions with `widths[i]` channels, each Conv-BatchNorm-ReLU, each stage ending
    in 2x2 max pooling (28 -> 14 -> 7 -> 3), then dropout, an optional Dense(`head_width`)-ReLU-dropout layer
    and the output layer. The convolutions (one of 32 channels at 28x28, two of 64 at 14x14, two of 128 at 7x7
    by default) spend their FLOPs at 14x14 and 7x7, where the patch matrices stay small. With `fused_pool`,
    training computes each stage's last BatchNorm-ReLU on the pooled values (`batch_norm_relu_pool`): the same
    function and gradients as Flax's BatchNorm, ReLU and `nnx.max_pool` (used without it), fewer passes over
    the full-resolution activations.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128),
        depths: tuple[int, ...] = (1, 2, 2),
        dropout: float = 0.25,
        head_width: int = 0,
        fused_pool: bool = True,
        conv: str = "auto",
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        ops.resolve_conv(conv)
        self.compute_dtype = mixed_dtype(compute_dtype)
        if len(widths) != len(depths) or not widths or min(depths) < 1:
            raise ConfigError(
                f"config.model.widths={tuple(widths)} and config.model.depths={tuple(depths)} must have the same "
                "length (one entry per stage), with at least one convolution per stage."
            )
        convs, norms, c_in, size = [], [], 1, 28
        for width, depth in zip(widths, depths, strict=True):
            for _ in range(depth):
                convs.append(nnx.Conv(c_in, width, (3, 3), padding="SAME", use_bias=False, rngs=rngs))
                norms.append(nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs))
                c_in = width
            size //= 2
        if size < 1:
            raise ConfigError(f"config.model.widths={tuple(widths)}: {len(widths)} pooling stages shrink 28x28 to 0.")
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        features = size * size * c_in
        # An optional hidden Dense-ReLU layer: capacity for almost no FLOPs (the convolutions dominate).
        self.hidden = nnx.Linear(features, head_width, rngs=rngs) if head_width else None
        self.head = nnx.Linear(head_width or features, num_classes, rngs=rngs)
        self.depths = tuple(depths)
        self.dropout_rate = dropout
        self.fused_pool = fused_pool
        self.conv = conv

    def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits for images `x` (N, 28, 28, 1): batch statistics and dropout with a `dropout_key` (training),
        the running statistics without one."""
        training = dropout_key is not None
        # A forward pass alone is fastest through XLA's convolution for every layer of this net on CPU, the
        # one-channel first one included (12,000 images: 3.9 s, against 6.6 s with "taps" first, 7.8 s im2col).
        conv = self.conv if training or self.conv != "auto" else "xla"
        layer = 0
        for depth in self.depths:
            for i in range(depth):
                z = ops.conv2d_same(
                    x, self.convs[layer].kernel[...], conv, training=training, compute_dtype=self.compute_dtype
                )
                if training and self.fused_pool and i == depth - 1:
                    x = batch_norm_relu_pool(self.norms[layer], z)
                else:
                    x = jax.nn.relu(self.norms[layer](z, use_running_average=not training))
                layer += 1
            if not training:
                x = ops.max_pool_2x2(x)
            elif not self.fused_pool:
                # Flax's pooling: jitted on XLA:CPU, autodiff of the reshape-max `ops.max_pool_2x2` inside this
                # net loses much of the gradient (tests/test_recipe.py); reduce_window's gradient is right.
                x = nnx.max_pool(x, (2, 2), (2, 2), "VALID")
        keys = jax.random.split(dropout_key) if training else (None, None)
        x = ops.dropout(x.reshape(x.shape[0], -1), self.dropout_rate, keys[0])
        if self.hidden is not None:
            x = ops.dropout(jax.nn.relu(apply_dense(self.hidden, x, self.compute_dtype)), self.dropout_rate, keys[1])
        return apply_dense(self.head, x, self.compute_dtype)


MODELS: dict[str, Callable[..., nnx.Module]] = {"seed_cnn": SeedCNN, "vgg_bn": VGGBatchNorm}


def create_model(name: str, *, seed: int, **kwargs: Any) -> nnx.Module:
    """Builds the registered model `name` with parameters initialised from `seed`.

    The initialisation runs as one jitted program: the same bits as layer by layer (tests/test_models.py), one
    compilation instead of one per parameter shape, and one that the persistent compilation cache keeps. The seed
    is the program's argument, not a constant in it: every seed of a model runs the one compiled program.
    """
    if name not in MODELS:
        raise ConfigError(f"config.model.name={name!r} is not a known model; choose one of {sorted(MODELS)}.")
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))  # a cache key
    return _initialiser(name, frozen)(seed)


@functools.cache
def _initialiser(name: str, kwargs: tuple[tuple[str, Any], ...]) -> Callable[[int], nnx.Module]:
    """The jitted `seed -> MODELS[name](**kwargs)`, one per model and arguments in a process."""
    return nnx.jit(lambda seed: MODELS[name](rngs=nnx.Rngs(params=jax.random.key(seed)), **dict(kwargs)))


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(int(jnp.size(p)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
