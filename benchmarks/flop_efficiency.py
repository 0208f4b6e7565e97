r"""How close each CNN's training step comes to the machine's matrix-product rate: one JSON line per config.

    python -m benchmarks flop_efficiency                        # the study's CNN and vgg_bn, each with its config
    python -m benchmarks flop_efficiency --configs=vgg_bn --steps=100 --config.model.fused_pool=False
    python -m benchmarks flop_efficiency --layers              # and each convolution alone, and the rest of the step
    python -m benchmarks flop_efficiency --configs=cnn --compute_dtype=float32,bfloat16   # both dtypes, one sitting
    python -m benchmarks flop_efficiency --products --configs=  # the product rates per layout and dtype alone

First a line with the limit: the GFLOP/s XLA reaches on a plain float32 matrix product of the study CNN's conv2
shape (7744 x 576) . (576 x 128), the best of measurements before, between and after the configs'. Then for each
config (`--config.FIELD=VALUE` overrides apply to each) and compute dtype: the matrix-product FLOPs of one training
image (counted from the step's own jaxpr: every `dot_general` and convolution of the forward and backward passes
whose result is used, the optimizer's elementwise work left out), the measured training images/s of the package's
jitted multi-step call (data on the device, the config's batch and recipe: augmentation, BatchNorm and the moving
average included), and `ratio` = measured step time / the time those FLOPs take at the limit; the same per epoch
of the config's training split (training steps only: `epoch_seconds` against `epoch_limit_seconds`). Every dtype is
measured against the float32 limit.

--layers: each convolution of the model is also timed alone as training runs it (the config's conv implementation,
forward pass, weight gradient and, except for the first layer, input gradient, patch matrices and their fold-back
included, `config.steps_per_call` steps per jitted call in a `lax.scan`): one line per layer with its ratio to the
limit; a last line splits the step into its convolutions and the rest (pooling, BatchNorm, activations, dropout,
dense layers, loss, optimizer), the rest measured in place: the same train call with every convolution replaced by
a stand-in without products.

--products: the study CNN's products at batch 64 in each layout XLA may be handed (forward, input gradient, weight
gradient as autodiff writes it and with the patches laid out), float32 and bfloat16 operands: one line each.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax._src.interpreters import partial_eval  # dce_jaxpr: no public equivalent

from benchmarks import common, layers, products
from fmnist_jax.training import state as state_lib
from fmnist_jax.training.step import train_step

COMPUTE_DTYPES = ("float32", "bfloat16")


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
        return 2 * int(np.prod(out)) * int(np.prod(rhs)) // out_channels  # the kernel's shape counts the groups
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


def flops_per_image(config: ml_collections.ConfigDict) -> int:
    """Matrix-product FLOPs of one training step on one batch of `config`'s recipe, per image: the useful ones, the
    same whatever `model.conv` measures (counted on the patch-matrix form; XLA's convolution computes a VALID
    layer's input gradient over the zero-padded gradient, 23% more for the study CNN)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.conv = "im2col"
    graphs, state, _ = state_lib.abstract_train_state(config)
    recipe = state_lib.Recipe.from_config(config)
    b = config.batch_size
    images, labels = jnp.zeros((b, 28, 28), jnp.uint8), jnp.zeros((b,), jnp.int32)
    key = jax.random.key(0)

    def step(state):
        keys = (key, key if recipe.augment.enabled else None)
        return train_step(graphs, recipe, state, images, labels, keys, jnp.int32(0))

    jaxpr = jax.make_jaxpr(step)(state).jaxpr
    # Without the products whose results nothing uses, as XLA drops them: a custom VJP computes every input's
    # gradient, the images' included (bfloat16's `ops.im2col_mixed` on the first layer).
    jaxpr, _ = partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return count_flops(jaxpr) // b


def config_row(name: str, config, arrays: common.Arrays, flops: int, timing: common.Timing, rate: float) -> dict:
    """The figures of one config and dtype against the limit `rate` (GFLOP/s)."""
    step, batch = timing.step_seconds, config.batch_size
    flop_seconds = flops * batch / (rate * 1e9)
    epoch_steps = len(arrays.train) // batch
    return {
        "config": name,
        "model": config.model.name,
        "compute_dtype": config.compute_dtype,
        "num_params": timing.num_params,
        "batch_size": batch,
        "train_mflop_per_image": round(flops / 1e6, 2),
        **common.speed_fields(step, batch, epoch_steps),
        "flop_limit_ms_per_step": round(1000 * flop_seconds, 2),
        "ratio": round(step / flop_seconds, 2),
        "epoch_limit_seconds": round(epoch_steps * flop_seconds, 2),
        "achieved_gflops": round(flops * batch / step / 1e9, 1),
        "compile_seconds": round(timing.compile_seconds, 2),
        "data": arrays.source,
    }


def parse(argv: Sequence[str] | None):
    """The flags, the configs (name -> config, overrides applied) and the dtypes: all checked before any timing."""
    parser = common.parser("flop_efficiency", __doc__)
    parser.add_argument("--configs", default="cnn,vgg_bn", help="comma-separated CNN config names in configs/")
    parser.add_argument("--steps", type=int, default=120, help="timed train steps per config (and per layer)")
    parser.add_argument("--layers", action="store_true", help="also time each convolution alone (see above)")
    parser.add_argument("--products", action="store_true", help="also time the study CNN's products (see above)")
    parser.add_argument("--compute_dtype", default="float32", help="comma-separated compute dtypes, each measured")
    parser.add_argument("--matmul_seconds", type=float, default=3.0, help="timing of each limit measurement")
    parser.add_argument("--product_seconds", type=float, default=2.0, help="timing of each --products product")
    args, overrides = common.parse(parser, argv)
    common.check_at_least(parser, args, "steps")
    if args.matmul_seconds <= 0 or args.product_seconds <= 0:
        parser.error("--matmul_seconds and --product_seconds must be above 0")
    dtypes = tuple(args.compute_dtype.split(","))
    if given := [o for o in overrides["config"] if o.split("=", 1)[0] == "--config.compute_dtype"]:
        parser.error(f"{given[-1]}: each dtype of --compute_dtype is measured; set it there (--compute_dtype=bfloat16)")
    for dtype in dtypes:
        if dtype not in COMPUTE_DTYPES:
            parser.error(f"--compute_dtype: {dtype!r} is not float32 or bfloat16")
    with common.usage_errors(parser):
        configs = {
            name: common.cnn_config(name, overrides["config"], flag="configs")
            for name in filter(None, args.configs.split(","))
        }
    return args, configs, dtypes


def main(argv: Sequence[str] | None = None) -> None:
    args, configs, dtypes = parse(argv)
    rates, measured = [products.matmul_rate(args.matmul_seconds)], []
    for name, base in configs.items():
        arrays = common.load_arrays(base)
        for dtype in dtypes:
            config = common.with_fields(base, compute_dtype=dtype)
            timing = common.time_training(config, arrays.train, steps=args.steps)
            rest = layers.step_without_convolutions(config, arrays.train, args.steps) if args.layers else None
            measured.append((name, config, arrays, flops_per_image(config), timing, rest))
            rates.append(products.matmul_rate(args.matmul_seconds))  # between runs too: the best is the limit
    rate = max(rates)
    common.emit(matmul_shape=products.MATMUL_SHAPE, matmul_gflops=round(rate, 1), measurements=len(rates))
    if args.products:
        for row in products.product_rows(COMPUTE_DTYPES, args.product_seconds):
            common.emit(**row)
    for name, config, arrays, flops, timing, rest in measured:
        common.emit(**config_row(name, config, arrays, flops, timing, rate))
        if args.layers:
            calls = max(1, args.steps // config.steps_per_call)
            for row in layers.layer_rows(name, config, timing.step_seconds, rest, rate=rate, calls=calls):
                common.emit(**row)
