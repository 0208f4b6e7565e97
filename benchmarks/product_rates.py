r"""GFLOP/s of the study CNN's matrix products in each layout XLA may be handed, float32 and bfloat16: JSON lines.

    python benchmarks/product_rates.py
    python benchmarks/product_rates.py --dtypes=float32 --seconds=1

For each im2col convolution (patches P (m, k), kernel W (k, n), output gradient dy (m, n)) and dense layer, at
batch 64: the forward product P.W, the input gradient dy.W^T, the weight gradient as autodiff writes it (P^T.dy:
dot_general contracting axis 0 of both operands) and with the patches already laid out as P^T (k, m). bfloat16
rows cast the operands to bfloat16 and accumulate in float32 (`preferred_element_type`). The last line is the
study CNN's float32 epoch limit: its training FLOPs at the conv2 forward product's float32 rate. The CPU model and
its bfloat16 flags are printed first.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp

from benchmarks.flop_efficiency import cpu_flags, cpu_model

# (name, m, k, n) of the study CNN at batch 64: conv1 26x26 from 1 channel, conv2 11x11 from 64, conv3 3x3 from
# 128 (im2col: m = 64 * out_h * out_w, k = 9 * in_channels), then the two dense layers.
LAYERS = (
    ("conv1", 64 * 26 * 26, 9, 64),
    ("conv2", 64 * 11 * 11, 576, 128),
    ("conv3", 64 * 3 * 3, 1152, 256),
    ("dense1", 64, 256, 256),
    ("dense2", 64, 256, 10),
)
STUDY_EPOCH_TFLOP = 3.4  # the study CNN's training FLOPs per 48k-image epoch (forward + both gradients)


def contract(lhs_axis: int, rhs_axis: int):
    """A float32-accumulating product that contracts axis `lhs_axis` of its first operand with `rhs_axis` of its
    second: the form XLA is handed."""
    dims = (((lhs_axis,), (rhs_axis,)), ((), ()))
    return lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def products(m: int, k: int, n: int):
    """(name, fn, operand shapes) of the four product forms of one layer."""
    return (
        ("forward P.W", contract(1, 0), ((m, k), (k, n))),
        ("input_grad dy.W^T", contract(1, 1), ((m, n), (k, n))),
        ("weight_grad P^T.dy (autodiff)", contract(0, 0), ((m, k), (m, n))),
        ("weight_grad with P^T laid out (k, m)", contract(1, 0), ((k, m), (m, n))),
    )


def rate(fn, shapes, dtype, seconds: float) -> float:
    keys = jax.random.split(jax.random.key(0), len(shapes))
    args = [jax.random.normal(key, s).astype(dtype) for key, s in zip(keys, shapes, strict=True)]
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            out = f(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / 5)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per product")
    args = parser.parse_args(argv)
    print(
        json.dumps(
            {"cpu": cpu_model(), "flags": cpu_flags(), "backend": jax.default_backend(), "jax": jax.__version__}
        ),
        flush=True,
    )
    best_plain = 0.0
    for dtype in args.dtypes.split(","):
        for layer, m, k, n in LAYERS:
            for name, fn, shapes in products(m, k, n):
                seconds = rate(fn, shapes, jnp.dtype(dtype), args.seconds)
                gflops = 2 * m * k * n / seconds / 1e9
                if dtype == "float32" and layer == "conv2" and name.startswith("forward"):
                    best_plain = gflops
                row = {
                    "layer": layer,
                    "product": name,
                    "m": m,
                    "k": k,
                    "n": n,
                    "dtype": dtype,
                    "gflops": round(gflops, 1),
                }
                print(json.dumps(row), flush=True)
    if best_plain:
        print(
            json.dumps(
                {
                    "study_cnn_float32_epoch_limit_seconds": round(STUDY_EPOCH_TFLOP * 1e3 / best_plain, 1),
                    "at_gflops": round(best_plain, 1),
                    "cpu": cpu_model(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
