r"""Where a CNN train step's time goes: a `jax.profiler` trace of the project's train step, summed per XLA op.

    python benchmarks/profile_step.py                    # the study's CNN, 1 step per call, batch 64
    python benchmarks/profile_step.py --conv=xla --top=25
    python benchmarks/profile_step.py --config=vgg_bn --batch=128   # the stronger CNN with its whole recipe
    python benchmarks/profile_step.py --forward_only     # the evaluation forward pass, batch --batch

Prints one JSON line per XLA operation (thunk) of the compiled step, the most expensive first: milliseconds
per step, the op's output shape and the JAX operation it came from, then one line with the total.
XLA:CPU runs independent ops concurrently on the cores, so the per-op times can add up to more than the
step's wall time; read them as where the cores are busy. Products that XLA:CPU hands to Eigen (plain `dot`
ops, such as the weight gradients in autodiff's layout) run on the thread pool after their thunk returns: the
trace shows them as almost free and charges their time to the ops beside them. For the products' share, use
`benchmarks/flop_efficiency.py --layers`, which times each convolution alone. The trace itself is kept in
--trace_dir (open it in Perfetto or TensorBoard's profiler).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import importlib
import json
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp
from flax import nnx

from fmnist_jax import parallel, train


def op_table(hlo_text: str) -> dict[str, str]:
    """XLA op name -> "shape  jax-op" from the optimized HLO."""
    table = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+)", line)
        if match and match.group(1) not in table:
            source = re.search(r'op_name="([^"]+)"', line)
            table[match.group(1)] = (match.group(2), source.group(1) if source else "")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cnn", help="a file in configs/, without .py (cnn, vgg_bn)")
    parser.add_argument("--steps", type=int, default=20, help="profiled calls")
    parser.add_argument("--conv", default="auto", help="config.model.conv")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--forward_only", action="store_true", help="profile the evaluation forward pass")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--trace_dir", default=None, help="where the trace goes (default: a temporary folder)")
    args = parser.parse_args()

    config = importlib.import_module(f"configs.{args.config}").get_config()
    config.model.conv = args.conv
    recipe = train.Recipe.from_config(config)
    mesh = parallel.make_mesh()
    graphs, state, _ = train.create_train_state(config)
    state = parallel.replicate(state, mesh)
    key = jax.random.key(0)
    images = jax.random.randint(key, (args.batch, 28, 28), 0, 256).astype(jnp.uint8)
    labels = jax.random.randint(key, (args.batch,), 0, 10)
    if args.forward_only:
        fn = jax.jit(lambda s, x: nnx.merge(graphs.model, s.model)(train.to_inputs(x)))

        def call(s):
            return s, fn(s, images)

        compiled = fn.lower(state, images).compile()
    else:
        # The config's recipe (augmentation, label smoothing, moving average) inside the step, as training has it.
        keys = (jax.random.fold_in(key, 2), jax.random.fold_in(key, 3) if recipe.augment.enabled else None)
        step = jnp.int32(0)
        fn = jax.jit(lambda s, x, y, k, t: train.train_step(graphs, recipe, s, x, y, k, t), donate_argnums=0)

        def call(s):
            return fn(s, images, labels, keys, step), None

        compiled = fn.lower(state, images, labels, keys, step).compile()
    table = op_table(compiled.as_text())
    for _ in range(3):
        state, out = call(state)
    jax.block_until_ready((state, out))

    trace_dir = pathlib.Path(args.trace_dir or tempfile.mkdtemp(prefix="fmnist_trace_"))
    start = time.perf_counter()
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(args.steps):
            state, out = call(state)
        jax.block_until_ready((state, out))
    wall = (time.perf_counter() - start) / args.steps
    trace_file = next(trace_dir.glob("**/*.json.gz"))
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    busy = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in table:
            busy[event["name"]] += event["dur"]
    for name, micros in busy.most_common(args.top):
        shape, source = table[name]
        print(
            json.dumps(
                {
                    "op": name,
                    "ms_per_step": round(micros / args.steps / 1000, 3),
                    "shape": shape,
                    "from": source.removeprefix("jit(<lambda>)/"),
                }
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "ops_ms_per_step": round(sum(busy.values()) / args.steps / 1000, 2),
                "wall_ms_per_step_while_tracing": round(wall * 1000, 2),
                "trace": str(trace_file),
                "backend": jax.default_backend(),
                "forward_only": args.forward_only,
                "batch": args.batch,
                "config": args.config,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
