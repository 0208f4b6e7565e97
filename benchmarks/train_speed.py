r"""CNN training and evaluation speed: one JSON line per loop variant, then one with the ratios.

    python benchmarks/train_speed.py                       # default loop, plain Flax loop, PyTorch twin (if torch)
    python benchmarks/train_speed.py --variants=all --steps=150
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/train_speed.py --variants=default

Every variant trains the study's CNN (batch 64) on the real data when it is installed (random images
otherwise) for `--steps` steps after a warm-up call that compiles; `epoch_seconds` is the time of those
steps scaled to one 48,000-image epoch (750 steps). Compare ratios measured in one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs import cnn
from fmnist_jax import data, ops, parallel, train

STEPS_PER_EPOCH = 750
BATCH = 64


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_arrays(n_train: int = 48000):
    try:
        ds = data.load(cnn.get_config().data, seed=0)
        return ds.train.images, ds.train.labels, ds.test.images, ds.test.labels, ds.source
    except data.DataError:
        rng = np.random.default_rng(0)
        return (
            rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_train).astype(np.int32),
            rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 10000).astype(np.int32),
            "random",
        )


def report(name: str, seconds_per_step: float, compile_seconds: float | None, **extra) -> dict:
    row = {
        "variant": name,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "ms_per_step": round(1000 * seconds_per_step, 2),
        "epoch_seconds": round(seconds_per_step * STEPS_PER_EPOCH, 1),
        "train_images_per_second": round(BATCH / seconds_per_step),
        "compile_seconds": None if compile_seconds is None else round(compile_seconds, 2),
        "peak_host_memory_mb": round(peak_rss_mb()),
        **extra,
    }
    print(json.dumps(row), flush=True)
    return row


def bench_ours(
    arrays, *, steps: int, steps_per_call: int, unroll: str, streamed: bool = False, conv: str = "auto"
) -> dict:
    """The project's loop: data on the devices, `steps_per_call` steps per jitted call."""
    images, labels = arrays[0], arrays[1]
    config = cnn.get_config()
    config.model.conv = conv
    mesh = parallel.make_mesh()
    graphs, state, _ = train.create_train_state(config)
    state = parallel.replicate(state, mesh)
    programs = train.Programs(graphs, mesh, BATCH, unroll=train.resolve_unroll(unroll, jax.default_backend(), conv))
    key = jax.random.key(0)
    n = len(labels)
    perm = programs.permutation(key, 0, n)
    fn = programs.train(steps_per_call)
    if streamed:  # one batch copied from the host per call, as a host-side input pipeline would
        perm_host = np.asarray(perm)

        def call(state, i):
            idx = perm_host[i * BATCH * steps_per_call : (i + 1) * BATCH * steps_per_call]
            x, y = parallel.replicate((images[idx], labels[idx]), mesh)
            inputs = train.TrainInputs(x, y, jnp.arange(len(idx)), key)
            return fn(state, inputs, jnp.int32(i * steps_per_call), jnp.int32(0))
    else:
        inputs = train.TrainInputs(*parallel.replicate((images, labels), mesh), perm, key)

        def call(state, i):
            return fn(state, inputs, jnp.int32(i * steps_per_call), jnp.int32(i * steps_per_call))

    start = time.perf_counter()
    state = jax.block_until_ready(call(state, 0))
    compile_seconds = time.perf_counter() - start
    calls = max(1, steps // steps_per_call)
    start = time.perf_counter()
    for i in range(1, calls + 1):
        state = call(state, i)
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - start) / (calls * steps_per_call)
    name = (
        f"ours_k{steps_per_call}_{unroll}"
        + ("_streamed" if streamed else "")
        + ("" if conv == "auto" else f"_{conv}_conv")
    )
    return report(
        name,
        per_step,
        compile_seconds,
        steps_per_call=steps_per_call,
        scan_unroll=unroll,
        data="streamed" if streamed else "on_device",
        conv=ops.resolve_conv(conv),
    )


class PlainCNN(nnx.Module):
    """The same CNN written the plain way (nnx.max_pool, nnx.Dropout with its own RNG stream)."""

    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.glorot_uniform()
        self.c1 = nnx.Conv(1, 64, (3, 3), padding="VALID", kernel_init=init, rngs=rngs)
        self.c2 = nnx.Conv(64, 128, (3, 3), padding="VALID", kernel_init=init, rngs=rngs)
        self.c3 = nnx.Conv(128, 256, (3, 3), padding="VALID", kernel_init=init, rngs=rngs)
        self.d1 = nnx.Linear(256, 256, kernel_init=init, rngs=rngs)
        self.d2 = nnx.Linear(256, 10, kernel_init=init, rngs=rngs)
        self.drops = nnx.List([nnx.Dropout(r, rngs=rngs) for r in (0.25, 0.25, 0.4, 0.3)])

    def __call__(self, x):
        def pool(y):
            return nnx.max_pool(y, (2, 2), (2, 2))

        x = self.drops[0](pool(jax.nn.leaky_relu(self.c1(x), 0.1)))
        x = self.drops[1](pool(jax.nn.elu(self.c2(x), 0.1)))
        x = self.drops[2](pool(jax.nn.leaky_relu(self.c3(x), 0.1)))
        x = self.drops[3](jax.nn.elu(self.d1(x.reshape(x.shape[0], -1)), 0.1))
        return self.d2(x)


def bench_plain(arrays, *, steps: int) -> dict:
    """The Flax MNIST example's loop: one `nnx.jit` call per step, batches fed from the host."""
    images, labels = arrays[0], arrays[1]
    model = PlainCNN(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3, eps=1e-7), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def batch(i):
        sl = slice(i * BATCH % (len(labels) - BATCH), i * BATCH % (len(labels) - BATCH) + BATCH)
        return jnp.asarray(images[sl, ..., None], jnp.float32) / 255.0, jnp.asarray(labels[sl])

    start = time.perf_counter()
    jax.block_until_ready(step(model, optimizer, *batch(0)))
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(1, steps + 1):
        loss = step(model, optimizer, *batch(i))
    jax.block_until_ready(loss)
    return report("plain_flax_jit_per_step", (time.perf_counter() - start) / steps, compile_seconds)


def bench_torch(arrays, *, steps: int) -> dict | None:
    """The PyTorch twin (same layers, batch, Adam), only when torch happens to be installed."""
    try:
        import torch
    except ImportError:
        print(json.dumps({"variant": "pytorch_eager", "skipped": "torch is not installed"}), flush=True)
        return None
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 64, 3),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Conv2d(64, 128, 3),
        nn.ELU(0.1),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Conv2d(128, 256, 3),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2),
        nn.Dropout(0.4),
        nn.Flatten(),
        nn.Linear(256, 256),
        nn.ELU(0.1),
        nn.Dropout(0.3),
        nn.Linear(256, 10),
    )
    assert sum(p.numel() for p in net.parameters()) == 438_026
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    x_all = torch.from_numpy(arrays[0]).float().div_(255).unsqueeze(1)
    y_all = torch.from_numpy(arrays[1]).long()

    def step(i):
        sl = slice(i * BATCH % (len(y_all) - BATCH), i * BATCH % (len(y_all) - BATCH) + BATCH)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x_all[sl]), y_all[sl])
        loss.backward()
        opt.step()

    for i in range(5):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return report(
        "pytorch_eager",
        (time.perf_counter() - start) / steps,
        None,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )


def bench_eval(arrays) -> dict:
    """Evaluation of the 10k test images with the project's padded fixed-size batches."""
    config = cnn.get_config()
    mesh = parallel.make_mesh()
    graphs, state, _ = train.create_train_state(config)
    state = parallel.replicate(state, mesh)
    programs = train.Programs(graphs, mesh, BATCH, unroll=False)
    split = data.Split(arrays[2], arrays[3])
    bs = train.eval_batch_size(config, mesh)
    start = time.perf_counter()
    train.evaluate_split(programs, state, split, batch_size=bs)
    first = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        train.evaluate_split(programs, state, split, batch_size=bs)
        times.append(time.perf_counter() - start)
    row = {
        "variant": "evaluate_test_set",
        "images": len(split),
        "seconds": round(min(times), 3),
        "eval_images_per_second": round(len(split) / min(times)),
        "first_call_seconds": round(first, 2),
        "eval_batch_size": bs,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per variant")
    parser.add_argument(
        "--variants",
        default="default,plain,torch,eval",
        help="comma-separated: default, plain, torch, eval, per_step, k25, rolled, unrolled, streamed, "
        "xla_conv, im2col_conv, or all",
    )
    args = parser.parse_args()
    wanted = set(args.variants.split(","))
    if "all" in wanted:
        wanted = {
            "default",
            "plain",
            "torch",
            "eval",
            "per_step",
            "k25",
            "rolled",
            "unrolled",
            "streamed",
            "xla_conv",
            "im2col_conv",
        }
    arrays = load_arrays()
    print(
        json.dumps(
            {
                "data": arrays[4],
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "devices": [str(d) for d in jax.devices()],
            }
        ),
        flush=True,
    )
    rows = {}
    default_k = cnn.get_config().steps_per_call
    if "default" in wanted:
        rows["default"] = bench_ours(arrays, steps=args.steps, steps_per_call=default_k, unroll="auto")
    if "per_step" in wanted:
        rows["per_step"] = bench_ours(arrays, steps=args.steps, steps_per_call=1, unroll="auto")
    if "k25" in wanted:
        rows["k25"] = bench_ours(arrays, steps=args.steps, steps_per_call=25, unroll="auto")
    if "rolled" in wanted:
        rows["rolled"] = bench_ours(arrays, steps=args.steps, steps_per_call=default_k, unroll="rolled")
    if "unrolled" in wanted:
        rows["unrolled"] = bench_ours(arrays, steps=args.steps, steps_per_call=default_k, unroll="full")
    if "streamed" in wanted:
        rows["streamed"] = bench_ours(arrays, steps=args.steps, steps_per_call=default_k, unroll="auto", streamed=True)
    for conv in ("xla", "im2col"):  # the other convolution than "auto" picks, to show why it picks as it does
        if f"{conv}_conv" in wanted and ops.resolve_conv("auto") != conv:
            rows[f"{conv}_conv"] = bench_ours(
                arrays, steps=args.steps, steps_per_call=default_k, unroll="auto", conv=conv
            )
    if "plain" in wanted:
        rows["plain"] = bench_plain(arrays, steps=args.steps)
    if "torch" in wanted:
        rows["torch"] = bench_torch(arrays, steps=args.steps)
    if "eval" in wanted:
        bench_eval(arrays)
    if "default" in rows:
        base = rows["default"]["ms_per_step"]
        ratios = {
            f"{k}_over_default": round(v["ms_per_step"] / base, 2) for k, v in rows.items() if v and k != "default"
        }
        print(json.dumps({"variant": "ratios (time per step relative to the default loop)", **ratios}), flush=True)


if __name__ == "__main__":
    main()
