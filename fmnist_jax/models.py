"""Flax NNX models and the name -> model registry that `config.model.name` selects from."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from fmnist_jax.errors import ConfigError

# Keras defaults, which the study used: Glorot-uniform kernels, zero biases.
KERNEL_INIT = nnx.initializers.glorot_uniform()


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, 'valid' (odd edges dropped), as reshape + max.

    The same values as `nnx.max_pool(x, (2, 2), (2, 2))`; its backward pass is an elementwise mask instead
    of `select_and_scatter`, which makes a CPU training step about a quarter faster (benchmarks/).
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class SeedCNN(nnx.Module):
    """The study's CNN: three conv blocks and a dense head, 438,026 parameters for 28x28x1 inputs."""

    def __init__(self, *, num_classes: int = 10, rngs: nnx.Rngs):
        conv = lambda i, o: nnx.Conv(i, o, (3, 3), padding="VALID", kernel_init=KERNEL_INIT, rngs=rngs)  # noqa: E731
        self.conv1, self.conv2, self.conv3 = conv(1, 64), conv(64, 128), conv(128, 256)
        self.dense1 = nnx.Linear(256, 256, kernel_init=KERNEL_INIT, rngs=rngs)
        self.dense2 = nnx.Linear(256, num_classes, kernel_init=KERNEL_INIT, rngs=rngs)
        self.drop1, self.drop2 = nnx.Dropout(0.25), nnx.Dropout(0.25)
        self.drop3, self.drop4 = nnx.Dropout(0.4), nnx.Dropout(0.3)

    def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits for images `x` (N, 28, 28, 1) in [0, 1]; dropout is applied only when a key is given."""
        keys = [None] * 4 if dropout_key is None else list(jax.random.split(dropout_key, 4))
        drop = lambda layer, y, key: layer(y, deterministic=key is None, rngs=key)  # noqa: E731
        x = drop(self.drop1, max_pool_2x2(jax.nn.leaky_relu(self.conv1(x), 0.1)), keys[0])
        x = drop(self.drop2, max_pool_2x2(jax.nn.elu(self.conv2(x), 0.1)), keys[1])
        x = drop(self.drop3, max_pool_2x2(jax.nn.leaky_relu(self.conv3(x), 0.1)), keys[2])
        x = x.reshape(x.shape[0], -1)
        x = drop(self.drop4, jax.nn.elu(self.dense1(x), 0.1), keys[3])
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
