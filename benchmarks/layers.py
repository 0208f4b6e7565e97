"""`flop_efficiency --layers`: each convolution of a model timed alone as training runs it, and the train step with
every convolution replaced by a stand-in without products (the rest of the step, measured in place).

A convolution form that is faster alone need not speed up the step: the split of the step into its convolutions
(the step less the stand-in step) and the rest, beside the convolutions alone, shows which.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from benchmarks import common
from fmnist_jax import data, ops
from fmnist_jax.training import state as state_lib


def conv_layers(config: ml_collections.ConfigDict) -> list[dict]:
    """Each convolution of one training forward pass of `config`'s model, in order: its op (`ops.conv2d_valid` or
    `ops.conv2d_same`) and padding ("valid" or "same"), input shape and dtype, kernel shape, and the other arguments
    the model passes (implementation, training, compute dtype)."""
    layers, real, inside = [], {"valid": ops.conv2d_valid, "same": ops.conv2d_same}, []

    def spy(padding):
        def conv(x, kernel, *args, **kwargs):
            if not inside:  # conv2d_same calls conv2d_valid on the padded input: record the outer call only
                layers.append(
                    {"op": real[padding], "padding": padding, "input": x.shape, "dtype": x.dtype}
                    | {"kernel": kernel.shape, "args": args, "kwargs": kwargs}
                )
            inside.append(padding)
            try:
                return real[padding](x, kernel, *args, **kwargs)
            finally:
                inside.pop()

        return conv

    graphs, state, _ = state_lib.abstract_train_state(config)
    images = jax.ShapeDtypeStruct((config.batch_size, 28, 28, 1), jnp.float32)
    with mock.patch.object(ops, "conv2d_valid", spy("valid")), mock.patch.object(ops, "conv2d_same", spy("same")):
        jax.eval_shape(lambda s, x: nnx.merge(graphs.model, s)(x, dropout_key=jax.random.key(0)), state.model, images)
    return layers


def layer_flops(layer: dict, first: bool) -> int:
    """Training FLOPs of one convolution over its batch: forward and weight gradient, and the input gradient
    unless it is the model's first layer (whose input, the images, needs none)."""
    n, h, w, _ = layer["input"]
    kh, kw, c_in, c_out = layer["kernel"]
    out_h, out_w = (h, w) if layer["padding"] == "same" else (h - kh + 1, w - kw + 1)
    forward = 2 * n * out_h * out_w * kh * kw * c_in * c_out
    return forward * (2 if first else 3)


def time_layer(layer: dict, first: bool, *, calls: int, steps_per_call: int) -> float:
    """Seconds per training step of one convolution alone: its forward and backward passes repeated in a
    `lax.scan` of `steps_per_call` (the kernel, and the input unless `first`, updated from their gradients so
    nothing is hoisted); the mean over `calls` calls after a compiling one, as the whole step is timed
    (`common.time_training`), so that the two compare."""
    fn = layer["op"]
    # Random operands made on the host: no program compiled for each shape before the one timed.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(layer["input"], np.float32).astype(layer["dtype"]))
    kernel = jnp.asarray(0.1 * rng.standard_normal(layer["kernel"], np.float32))
    out_shape = jax.eval_shape(lambda x, k: fn(x, k, *layer["args"], **layer["kwargs"]), x, kernel).shape
    cotangent = jnp.asarray(rng.standard_normal(out_shape, np.float32))

    def loss(x, k, scale):
        # The output's gradient is cotangent * scale, a new array each step as in training: with a constant one,
        # XLA would hoist out of the loop whatever the backward pass builds from it alone.
        return (fn(x, k, *layer["args"], **layer["kwargs"]).astype(jnp.float32) * cotangent).sum() * scale

    def body(carry, _):
        x, k, scale = carry
        if first:
            dk = jax.grad(loss, argnums=1)(x, k, scale)
            return ((x + 1e-9 * dk.sum()).astype(x.dtype), k - 1e-9 * dk, scale + 1e-9 * dk.sum()), None
        dx, dk = jax.grad(loss, argnums=(0, 1))(x, k, scale)
        return (x - 1e-9 * dx, k - 1e-9 * dk, scale + 1e-9 * dk.sum()), None

    run = jax.jit(lambda x, k: jax.lax.scan(body, (x, k, jnp.float32(1)), None, length=steps_per_call)[0])
    jax.block_until_ready(run(x, kernel))
    start = time.perf_counter()
    for _ in range(calls):
        out = run(x, kernel)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / (calls * steps_per_call)


def stand_in(padding: str):
    """A cheap stand-in for `ops.conv2d_valid` or `ops.conv2d_same`: the right output shape and dtype, gradients to
    the input and the kernel, no matrix product (the channel mean times the kernel's centre tap, summed)."""

    def conv(x, kernel, *args, compute_dtype=None, **kwargs):
        kh, kw = kernel.shape[:2]
        if padding == "valid":
            x = x[:, : x.shape[1] - kh + 1, : x.shape[2] - kw + 1, :]
        y = x.astype(jnp.float32).mean(-1, keepdims=True) * kernel[kh // 2, kw // 2].sum(0)
        return y.astype(compute_dtype if ops.is_mixed(compute_dtype) else x.dtype)

    return conv


@contextlib.contextmanager
def convolutions_stood_in() -> Iterator[None]:
    """Within it, every `ops.conv2d_valid` and `ops.conv2d_same` call is its `stand_in`."""
    with (
        mock.patch.object(ops, "conv2d_valid", stand_in("valid")),
        mock.patch.object(ops, "conv2d_same", stand_in("same")),
    ):
        yield


def step_without_convolutions(config: ml_collections.ConfigDict, train: data.Split, steps: int) -> float:
    """Seconds per step of the same train call with every convolution replaced by `stand_in`: what the rest of the
    step (pooling, BatchNorm, activations, dropout, dense layers, loss, optimizer, augmentation) costs in place."""
    with convolutions_stood_in():
        return common.time_training(config, train, steps=steps).step_seconds


def layer_rows(
    name: str, config: ml_collections.ConfigDict, step_seconds: float, rest_seconds: float, *, rate: float, calls: int
) -> list[dict]:
    """One row per convolution of `config`'s model timed alone (GFLOP/s `rate` as the limit), then the step split
    into its convolutions (the step less `rest_seconds`, the step without them) and the rest."""
    rows, conv_seconds, conv_flops = [], 0.0, 0
    for i, layer in enumerate(conv_layers(config)):
        flops = layer_flops(layer, i == 0)
        seconds = time_layer(layer, i == 0, calls=calls, steps_per_call=config.steps_per_call)
        conv_seconds, conv_flops = conv_seconds + seconds, conv_flops + flops
        rows.append(
            {
                "config": name,
                "layer": i,
                "padding": layer["padding"],
                "input": list(layer["input"]),
                "dtype": str(layer["dtype"]),
                "compute_dtype": config.compute_dtype,
                "kernel": list(layer["kernel"]),
                "gflop_per_step": round(flops / 1e9, 3),
                "ms_per_step": round(1000 * seconds, 2),
                "flop_limit_ms": round(1000 * flops / (rate * 1e9), 2),
                "ratio": round(seconds * rate * 1e9 / flops, 2),
            }
        )
    rows.append(
        {
            "config": name,
            "compute_dtype": config.compute_dtype,
            "step_ms": round(1000 * step_seconds, 2),
            "convolutions_alone_ms": round(1000 * conv_seconds, 2),
            "convolutions_alone_ratio": round(conv_seconds * rate * 1e9 / conv_flops, 2),
            "step_without_convolutions_ms": round(1000 * rest_seconds, 2),
            "convolutions_in_step_ms": round(1000 * (step_seconds - rest_seconds), 2),
            "convolutions_in_step_ratio": round((step_seconds - rest_seconds) * rate * 1e9 / conv_flops, 2),
        }
    )
    return rows
