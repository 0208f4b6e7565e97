"""Flax NNX models and the name -> model registry that `config.model.name` selects from."""

from __future__ import annotations

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


class SeedCNN(nnx.Module):
    """The study's CNN: three conv blocks and a dense head, 438,026 parameters for 28x28x1 inputs."""

    def __init__(self, *, num_classes: int = 10, conv: str = "auto", rngs: nnx.Rngs):
        ops.resolve_conv(conv)  # an unknown implementation fails here, not at the first call
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
        z = ops.conv2d_valid(x, layer.kernel[...], self.conv, training=training)
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
        x = ops.dropout(elu(self.dense1(x)), r[3], keys[3])
        return self.dense2(x)


MODELS: dict[str, Callable[..., nnx.Module]] = {"seed_cnn": SeedCNN}


def create_model(name: str, *, seed: int, **kwargs: Any) -> nnx.Module:
    """Builds the registered model `name` with parameters initialised from `seed`."""
    if name not in MODELS:
        raise ConfigError(f"config.model.name={name!r} is not a known model; choose one of {sorted(MODELS)}.")
    return MODELS[name](rngs=nnx.Rngs(params=seed), **kwargs)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(int(jnp.size(p)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
