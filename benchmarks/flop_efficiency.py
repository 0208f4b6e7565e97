r"""How close each CNN's training step comes to the matrix-product rate of the machine: one JSON line per model.

    python benchmarks/flop_efficiency.py                       # the study's CNN and vgg_bn, each with its config
    python benchmarks/flop_efficiency.py --configs=vgg_bn --steps=100
    python benchmarks/flop_efficiency.py --layers             # and each convolution alone, and the rest of the step
    python benchmarks/flop_efficiency.py --layers --compute_dtype=bfloat16
    python benchmarks/flop_efficiency.py --configs=cnn --compute_dtype=float32,bfloat16   # both dtypes, one sitting

For each config: the matrix-product FLOPs of one training image (counted from the step's own jaxpr: every
`dot_general` and convolution of the forward and backward passes whose result is used, the optimizer's elementwise
work left out), the measured training images/s of the project's jitted multi-step call (data on the device, the
config's batch and recipe, augmentation, BatchNorm and the moving average included), and `ratio` = measured step
time / the time those FLOPs take at the rate XLA reaches on a plain float32 matrix product of the conv2 shape
(7744 x 576) . (576 x 128), measured in the same run; and the same per epoch of the config's training split
(training steps only: `epoch_seconds` against `epoch_limit_seconds`). Each compute dtype of `--compute_dtype` is
measured against that float32 limit. The CPU model and its bfloat16/AMX flags are printed with the figures.

With --layers, each convolution of the model is also timed alone, as training runs it (the config's conv
implementation, forward pass, weight gradient and, except for the first layer, input gradient, patch matrices and
their fold-back included), 10 steps per jitted call in a `lax.scan` as the training loop runs them: one line per
layer with its ratio to the same FLOP limit. A last line splits the step into its convolutions and the rest (pooling,
BatchNorm, activations, dropout, dense layers, loss, optimizer), the rest measured in place: the same train call with
every convolution replaced by a stand-in without products (`convolutions_in_step_ms` is the step less that, beside
`convolutions_alone_ms`: a convolution form that is faster alone need not speed up the step, docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time
from unittest import mock

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax._src.interpreters import partial_eval  # dce_jaxpr: no public equivalent

from benchmarks.accelerator_check import cnn_config, cpu_model, train_run
from fmnist_jax import data, ops, parallel, train

MATMUL_SHAPE = (7744, 576, 128)  # the study CNN's conv2 as im2col at batch 64: (m, k, n)
TRAIN_FILE_IMAGES = 60_000  # the official training file, before the validation split


def cpu_flags() -> list[str]:
    """The CPU's flags that matter for the products: AVX-512, bfloat16 and AMX (Linux; empty elsewhere)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx") or f == "avx512f")


def load_config(name: str):
    import importlib

    return importlib.import_module(f"configs.{name}").get_config()


def matmul_rate(seconds: float = 3.0) -> float:
    """GFLOP/s of a float32 (m, k) . (k, n) product under jit, best of repeated timed batches."""
    m, k, n = MATMUL_SHAPE
    a = jax.random.normal(jax.random.key(0), (m, k))
    b = jax.random.normal(jax.random.key(1), (k, n))
    dot = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(dot(a, b))
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(10):
            out = dot(a, b)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * m * k * n / best / 1e9


def _product_flops(eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), (lb, _) = eqn.params["dimension_numbers"]
        lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
        batch = int(np.prod([lhs[d] for d in lb]))
        contract = int(np.prod([lhs[d] for d in lc]))
        m = int(np.prod(lhs)) // (batch * contract)
        n = int(np.prod(rhs)) // (batch * contract)
        return 2 * batch * m * n * contract
    if name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        rhs = eqn.invars[1].aval.shape  # the kernel: its size over the output channels = MACs per output
        spec = eqn.params["dimension_numbers"]
        out_channels = rhs[spec.rhs_spec[0]]
        return 2 * int(np.prod(out)) * int(np.prod(rhs)) // out_channels // eqn.params["feature_group_count"]
    return 0


def count_flops(jaxpr) -> int:
    """Matrix-product FLOPs of a (closed) jaxpr, sub-jaxprs included (a scan's body times its length)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += _product_flops(eqn)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                total += count_flops(inner) * (eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1)
    return total


def flops_per_image(config) -> int:
    """Matrix-product FLOPs of one training step on one batch of `config`'s recipe, per image."""
    graphs, state, _ = train.create_train_state(config, 100)
    recipe = train.Recipe.from_config(config)
    b = config.batch_size
    images, labels = jnp.zeros((b, 28, 28), jnp.uint8), jnp.zeros((b,), jnp.int32)
    key = jax.random.key(0)

    def step(state):
        keys = (key, key if recipe.augment.enabled else None)
        return train.train_step(graphs, recipe, state, images, labels, keys, jnp.int32(0))

    jaxpr = jax.make_jaxpr(step)(state).jaxpr
    # Without the products whose results nothing uses, as XLA drops them: a custom VJP computes every input's
    # gradient, the images' included (bfloat16's `ops.im2col_mixed` on the first layer).
    jaxpr, _ = partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return count_flops(jaxpr) // b


def conv_layers(config) -> list[dict]:
    """Each convolution of one training forward pass of `config`'s model, in order: its op (`ops.conv2d_valid` or
    `ops.conv2d_same`) and padding ("valid" or "same"), input shape and dtype, kernel shape, and the other arguments
    the model passes (implementation, training, compute dtype)."""
    layers, real = [], {"valid": ops.conv2d_valid, "same": ops.conv2d_same}
    inside = []

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

    graphs, state, _ = train.create_train_state(config)
    images = jnp.zeros((config.batch_size, 28, 28, 1))
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


def time_layer(layer: dict, first: bool, calls: int = 6, steps_per_call: int = 10) -> float:
    """Seconds per training step of one convolution alone: its forward and backward passes repeated in a
    `lax.scan` (the kernel, and the input unless `first`, updated from their gradients so nothing is hoisted)."""
    fn = layer["op"]
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], layer["input"]).astype(layer["dtype"])
    kernel = 0.1 * jax.random.normal(keys[1], layer["kernel"])
    out_shape = jax.eval_shape(lambda x, k: fn(x, k, *layer["args"], **layer["kwargs"]), x, kernel).shape
    cotangent = jax.random.normal(keys[2], out_shape)

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
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(run(x, kernel))
        best = min(best, (time.perf_counter() - start) / steps_per_call)
    return best


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
def convolutions_stood_in():
    """Within it, every `ops.conv2d_valid` and `ops.conv2d_same` call is its `stand_in`."""
    with (
        mock.patch.object(ops, "conv2d_valid", stand_in("valid")),
        mock.patch.object(ops, "conv2d_same", stand_in("same")),
    ):
        yield


def step_without_convolutions(config, arrays, steps: int) -> float:
    """Seconds per step of the same train call with every convolution replaced by `stand_in`: what the rest of the
    step (pooling, BatchNorm, activations, dropout, dense layers, loss, optimizer, augmentation) costs in place."""
    with convolutions_stood_in():
        return measure(config, arrays, steps)["step_seconds"]


def layer_rows(name: str, config, step_seconds: float, rate: float, rest_seconds: float) -> list[dict]:
    """One row per convolution of `config`'s model timed alone, then the step split into its convolutions (the step
    less `rest_seconds`, the step without them) and the rest, against the convolutions alone."""
    rows, conv_seconds, conv_flops = [], 0.0, 0
    for i, layer in enumerate(conv_layers(config)):
        flops, seconds = layer_flops(layer, i == 0), time_layer(layer, i == 0)
        conv_seconds, conv_flops = conv_seconds + seconds, conv_flops + flops
        rows.append(
            {
                "config": name,
                "layer": i,
                "padding": layer["padding"],
                "input": list(layer["input"]),
                "dtype": str(layer["dtype"]),
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
            "step_ms": round(1000 * step_seconds, 2),
            "convolutions_alone_ms": round(1000 * conv_seconds, 2),
            "convolutions_alone_ratio": round(conv_seconds * rate * 1e9 / conv_flops, 2),
            "step_without_convolutions_ms": round(1000 * rest_seconds, 2),
            "convolutions_in_step_ms": round(1000 * (step_seconds - rest_seconds), 2),
            "convolutions_in_step_ratio": round((step_seconds - rest_seconds) * rate * 1e9 / conv_flops, 2),
        }
    )
    return rows


def measure(config, arrays, steps: int) -> dict:
    """Seconds per step of the project's jitted train call for `config` (compiled and warmed first)."""
    images, labels = arrays
    compile_seconds, step_seconds, *_ = train_run(
        config,
        parallel.make_mesh(),
        images,
        labels,
        batch=config.batch_size,
        steps=steps,
        steps_per_call=config.steps_per_call,
    )
    num_params = train.create_train_state(config)[2]
    return {"num_params": num_params, "step_seconds": step_seconds, "compile_seconds": compile_seconds}


def epoch_images(config) -> int:
    """Training images per epoch of `config`: `data.num_train`, or the 60,000 less the validation split."""
    return config.data.num_train or TRAIN_FILE_IMAGES - config.data.validation_size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="cnn,vgg_bn", help="comma-separated config names in configs/")
    parser.add_argument("--steps", type=int, default=120, help="timed train steps per config")
    parser.add_argument("--layers", action="store_true", help="also time each convolution alone (see above)")
    parser.add_argument(
        "--compute_dtype",
        default="float32",
        help="comma-separated config.compute_dtype values, each measured (the limit stays float32)",
    )
    parser.add_argument("--matmul_seconds", type=float, default=3.0, help="timing of each product-rate measurement")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.matmul_seconds <= 0:
        parser.error("--steps must be at least 1 and --matmul_seconds above 0")
    for name in args.configs.split(","):  # every name and dtype checked before anything is timed
        cnn_config(name, parser, flag="--configs")
    for dtype in args.compute_dtype.split(","):
        if dtype not in ("float32", "bfloat16"):
            parser.error(f"--compute_dtype: {dtype!r} is not float32 or bfloat16")
    try:
        ds = data.load(load_config("cnn").data, seed=0)
        arrays, source = (ds.train.images, ds.train.labels), ds.source
    except data.DataError:
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (48000, 28, 28), np.uint8), rng.integers(0, 10, 48000, np.int32)
        arrays, source = (images, labels), "random"
    machine = {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "data": source,
    }
    rates = [matmul_rate(args.matmul_seconds)]
    rows = []
    for name in args.configs.split(","):
        for dtype in args.compute_dtype.split(","):
            config = load_config(name)
            config.compute_dtype = dtype
            flops = flops_per_image(config)
            timing = measure(config, arrays, args.steps)
            rows.append((name, config, flops, timing))
            rates.append(matmul_rate(args.matmul_seconds))  # between runs too: the best is the machine's rate
    rate = max(rates)
    print(json.dumps({**machine, "matmul_shape": MATMUL_SHAPE, "matmul_gflops": round(rate, 1)}), flush=True)
    for name, config, flops, timing in rows:
        images_per_second = config.batch_size / timing["step_seconds"]
        flop_seconds = flops * config.batch_size / (rate * 1e9)
        steps_per_epoch = epoch_images(config) // config.batch_size
        print(
            json.dumps(
                {
                    "config": name,
                    "model": config.model.name,
                    "compute_dtype": config.compute_dtype,
                    "num_params": timing["num_params"],
                    "batch_size": config.batch_size,
                    "train_mflop_per_image": round(flops / 1e6, 2),
                    "train_images_per_second": round(images_per_second),
                    "ms_per_step": round(1000 * timing["step_seconds"], 2),
                    "flop_limit_ms_per_step": round(1000 * flop_seconds, 2),
                    "ratio": round(timing["step_seconds"] / flop_seconds, 2),
                    "epoch_images": steps_per_epoch * config.batch_size,
                    "epoch_seconds": round(steps_per_epoch * timing["step_seconds"], 1),
                    "epoch_limit_seconds": round(steps_per_epoch * flop_seconds, 1),
                    "achieved_gflops": round(flops * images_per_second / 1e9, 1),
                    "compile_seconds": round(timing["compile_seconds"], 1),
                    "cpu": machine["cpu"],
                }
            ),
            flush=True,
        )
        if args.layers:
            rest = step_without_convolutions(config, arrays, args.steps)
            for row in layer_rows(name, config, timing["step_seconds"], rate, rest):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
