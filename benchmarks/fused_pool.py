r"""VGG-BN's training step with and without the fused BatchNorm-ReLU-pool, alternated in one process.

    python benchmarks/fused_pool.py                 # 3 rounds of 96 steps each, batch 128
    python benchmarks/fused_pool.py --rounds=5 --steps=48

`config.model.fused_pool` (configs/vgg_bn.py) computes each stage's last BatchNorm and ReLU on the 2x2-pooled
values (`models.batch_norm_relu_pool`, `ops.pool_affine_relu`) instead of normalising, rectifying and pooling the
full-resolution activations. Both settings train the same function; this prints one JSON line per timed run
(ms per step, mean training loss) and a summary with the best time of each and their ratio, with the CPU model.
The machine is shared, so compare the ratio of one run, not milliseconds across runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax

from benchmarks.accelerator_check import load_arrays, train_run
from benchmarks.flop_efficiency import cpu_model, load_config
from fmnist_jax import parallel


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=96, help="timed steps per run (after one compiled call)")
    parser.add_argument("--images", type=int, default=12800, help="training images on the device")
    args = parser.parse_args(argv)
    images, labels, _, source = load_arrays()
    images, labels = images[: args.images], labels[: args.images]
    best = {}
    for _ in range(args.rounds):
        for fused in (False, True):
            config = load_config("vgg_bn")
            config.model.fused_pool = fused
            _, seconds, loss, *_ = train_run(
                config,
                parallel.make_mesh(),
                images,
                labels,
                batch=config.batch_size,
                steps=args.steps,
                steps_per_call=8,
            )
            best[fused] = min(best.get(fused, float("inf")), seconds)
            print(
                json.dumps({"fused_pool": fused, "ms_per_step": round(seconds * 1e3, 1), "mean_loss": round(loss, 4)})
            )
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "backend": jax.default_backend(),
                "data": source,
                "best_ms_plain": round(best[False] * 1e3, 1),
                "best_ms_fused": round(best[True] * 1e3, 1),
                "fused_over_plain": round(best[True] / best[False], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
