"""The machine's matrix-product rates: the float32 limit that `flop_efficiency` divides by, and with
`flop_efficiency --products` the study CNN's products in each layout XLA may be handed, per dtype.

For each im2col convolution (patches P (m, k), kernel W (k, n), output gradient dy (m, n)) and dense layer of the
study CNN at batch 64: the forward product P·W, the input gradient dy·Wᵀ, the weight gradient as autodiff writes it
(Pᵀ·dy: dot_general contracting axis 0 of both operands) and with the patches already laid out as Pᵀ (k, m).
bfloat16 rows cast the operands to bfloat16 and accumulate in float32 (`preferred_element_type`), as
`compute_dtype="bfloat16"` does. A CPU with AMX or avx512_bf16 runs some of these layouts far faster than others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

MATMUL_SHAPE = (7744, 576, 128)  # the study CNN's conv2 as im2col at batch 64: (m, k, n)
# (name, m, k, n) of the study CNN at batch 64: conv1 26x26 from 1 channel, conv2 11x11 from 64, conv3 3x3 from
# 128 (im2col: m = 64 * out_h * out_w, k = 9 * in_channels), then the two dense layers.
LAYERS = (
    ("conv1", 64 * 26 * 26, 9, 64),
    ("conv2", 64 * 11 * 11, 576, 128),
    ("conv3", 64 * 3 * 3, 1152, 256),
    ("dense1", 64, 256, 256),
    ("dense2", 64, 256, 10),
)


def contract(lhs_axis: int, rhs_axis: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A float32-accumulating product contracting axis `lhs_axis` of its first operand with `rhs_axis` of its
    second: the form XLA is handed."""
    dims = (((lhs_axis,), (rhs_axis,)), ((), ()))
    return lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def forms(m: int, k: int, n: int) -> tuple[tuple[str, Callable, tuple[tuple[int, int], ...]], ...]:
    """(name, product, operand shapes) of the four product forms of one layer."""
    return (
        ("forward P.W", contract(1, 0), ((m, k), (k, n))),
        ("input_grad dy.W^T", contract(1, 1), ((m, n), (k, n))),
        ("weight_grad P^T.dy (autodiff)", contract(0, 0), ((m, k), (m, n))),
        ("weight_grad with P^T laid out (k, m)", contract(1, 0), ((k, m), (m, n))),
    )


def best_seconds(fn: Callable, shapes, dtype, seconds: float, repeats: int = 5) -> float:
    """The best time per call of jitted `fn` on random operands of `shapes` in `dtype` (made on the host: no program
    compiled for each shape before the one timed), over batches of `repeats` calls for `seconds` (at least one batch)
    after a compiling call."""
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.standard_normal(s, np.float32).astype(dtype)) for s in shapes]
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    best, deadline = float("inf"), time.perf_counter() + seconds
    while best == float("inf") or time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(repeats):
            out = f(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def gflops(m: int, k: int, n: int, seconds: float) -> float:
    return 2 * m * k * n / seconds / 1e9


def matmul_rate(seconds: float) -> float:
    """GFLOP/s of the float32 MATMUL_SHAPE forward product: the limit step times are measured against."""
    m, k, n = MATMUL_SHAPE
    return gflops(m, k, n, best_seconds(contract(1, 0), ((m, k), (k, n)), jnp.float32, seconds, repeats=10))


def product_rows(dtypes: tuple[str, ...], seconds: float) -> Iterator[dict]:
    """One row per layer, product form and dtype: its shape and GFLOP/s."""
    for dtype in dtypes:
        for layer, m, k, n in LAYERS:
            for name, fn, shapes in forms(m, k, n):
                rate = gflops(m, k, n, best_seconds(fn, shapes, jnp.dtype(dtype), seconds))
                yield {
                    "layer": layer,
                    "product": name,
                    "m": m,
                    "k": k,
                    "n": n,
                    "dtype": dtype,
                    "gflops": round(rate, 1),
                }
