r"""Where a CNN train step's time goes: a `jax.profiler` trace of the package's train call, summed per XLA op.

    python -m benchmarks profile                          # the study's CNN, 1 step per call, its batch of 64
    python -m benchmarks profile --config.model.conv=xla --top=25
    python -m benchmarks profile --config=vgg_bn          # the stronger CNN with its whole recipe
    python -m benchmarks profile --forward_only           # the evaluation program (forward pass, its batch)

Prints one JSON line per XLA operation (thunk) of the compiled program, the most expensive first: milliseconds
per step, the op's output shape and the JAX operation it came from, then one line with the total. The program is
the package's own (`Programs.train` with `--steps_per_call` steps per call, the config's recipe included; or
`Programs.eval` on one evaluation batch), on random images. XLA:CPU runs independent ops concurrently on the cores,
so the per-op times can add up to more than the step's wall time: read them as where the cores are busy. Products
that XLA:CPU hands to Eigen (plain `dot` ops, such as the weight gradients in autodiff's layout) run on the thread
pool after their thunk returns: the trace shows them as almost free and charges their time to the ops beside them.
For the products' share, `python -m benchmarks flop_efficiency --layers` times each convolution alone. The trace
itself is kept in a folder of its own under --trace_dir (open it in Perfetto or TensorBoard's profiler).
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from fmnist_jax import data, parallel
from fmnist_jax.training.evaluate import eval_batch_size


def op_table(hlo_text: str) -> dict[str, tuple[str, str]]:
    """XLA op name -> (its output shape, the JAX op it came from) from the optimized HLO."""
    table = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+)", line)
        if match and match.group(1) not in table:
            source = re.search(r'op_name="([^"]+)"', line)
            table[match.group(1)] = (match.group(2), source.group(1) if source else "")
    return table


def busy_micros(trace_dir: pathlib.Path, names: dict) -> tuple[collections.Counter, pathlib.Path]:
    """Microseconds of each op of `names` in the trace under `trace_dir` (complete events), and the trace file."""
    trace_file = next(trace_dir.glob("**/*.json.gz"))
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    busy = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in names:
            busy[event["name"]] += event["dur"]
    return busy, trace_file


def program_to_trace(config, *, forward_only: bool, steps_per_call: int) -> tuple[Callable[[], object], str, int]:
    """(a function that runs the program once and returns what to wait for, its optimized HLO, steps per run)
    for `config`'s train call on random images or, with `forward_only`, its evaluation program on one batch."""
    rng = np.random.default_rng(0)
    n = max(config.batch_size * max(steps_per_call, 2), eval_batch_size(config, parallel.make_mesh()))
    images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)
    run = common.trainer(config, data.Split(images, labels), steps_per_call=steps_per_call)
    if forward_only:
        batch = eval_batch_size(config, run.programs.mesh)
        args = parallel.shard_batch((images[:batch], labels[:batch], np.ones(batch, bool)), run.programs.mesh)
        hlo = run.programs.eval.lower(run.state, *args).compile().as_text()
        return lambda: run.programs.eval(run.state, *args), hlo, 1
    hlo = run.programs.train(run.k).lower(run.state, run.inputs, jnp.int32(0), jnp.int32(0)).compile().as_text()
    state = [run.state]

    def train_call():
        state[0] = run.call(state[0], 0)
        return state[0]

    return train_call, hlo, run.k


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("profile", __doc__)
    parser.add_argument("--config", default="cnn", help="a CNN config's name in configs/ (cnn, vgg_bn, ...)")
    parser.add_argument("--calls", type=int, default=20, help="profiled calls")
    parser.add_argument("--steps_per_call", type=int, default=1, help="train steps per profiled call")
    parser.add_argument("--forward_only", action="store_true", help="profile the evaluation program instead")
    parser.add_argument("--top", type=int, default=30, help="how many ops to print")
    parser.add_argument("--trace_dir", default=None, help="where the trace goes (default: a temporary folder)")
    args, overrides = common.parse(parser, argv)
    common.check_at_least(parser, args, "calls", "steps_per_call", "top")
    with common.usage_errors(parser):
        config = common.cnn_config(args.config, overrides["config"])
    # A folder of its own under --trace_dir, made before the compile (or one line): a reused one holds earlier
    # traces, which the profiler names by the second they began (two in one second share a name).
    with common.usage_errors(parser):
        try:
            if args.trace_dir:
                pathlib.Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
            trace_dir = pathlib.Path(tempfile.mkdtemp(prefix="fmnist_trace_", dir=args.trace_dir))
        except OSError as e:
            why = "a file, not a folder" if args.trace_dir and pathlib.Path(args.trace_dir).is_file() else e.strerror
            raise common.UsageError(f"--trace_dir={args.trace_dir}: {why}; name a writable folder") from e
    call, hlo, steps_per_call = program_to_trace(
        config, forward_only=args.forward_only, steps_per_call=args.steps_per_call
    )
    table = op_table(hlo)
    jax.block_until_ready(call())
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(args.calls):
            out = call()
        jax.block_until_ready(out)
        traced = time.perf_counter() - start  # the calls alone: not the profiler's stop and the trace's writing
    steps = args.calls * steps_per_call
    wall = traced / steps
    busy, trace_file = busy_micros(trace_dir, table)
    for name, micros in busy.most_common(args.top):
        shape, source = table[name]
        common.emit(op=name, ms_per_step=round(micros / steps / 1000, 3), shape=shape, **{"from": source})
    common.emit(
        ops_ms_per_step=round(sum(busy.values()) / steps / 1000, 2),
        wall_ms_per_step_while_tracing=round(wall * 1000, 2),
        ops=len(busy),
        steps=steps,
        trace=str(trace_file),
        forward_only=args.forward_only,
        batch=eval_batch_size(config, parallel.make_mesh()) if args.forward_only else config.batch_size,
        config=args.config,
        data="random",
    )
