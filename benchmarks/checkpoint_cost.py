r"""What a checkpoint of the study's CNN costs: seconds per save (blocking part and total), restore seconds,
and the size on disk. One JSON line per setting.

    python benchmarks/checkpoint_cost.py [--saves=10]

The training loop blocks only for the blocking part of an async save; the epoch slowdown of saving every
N steps is about (750 / N) x blocking seconds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax

from configs import cnn
from fmnist_jax import checkpoints, parallel, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=10)
    args = parser.parse_args()
    config = cnn.get_config()
    mesh = parallel.make_mesh()
    _, state, _ = train.create_train_state(config)
    state = parallel.replicate(state, mesh)
    for async_save in (True, False):
        with tempfile.TemporaryDirectory() as folder:
            store = checkpoints.CheckpointStore(
                pathlib.Path(folder) / "checkpoints", max_to_keep=3, async_save=async_save
            )
            blocking, total = [], []
            for step in range(1, args.saves + 1):
                start = time.perf_counter()
                store.save(step, state, {"step": step})
                blocking.append(time.perf_counter() - start)
                store.wait()
                total.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.restore_latest(state)
            restore = time.perf_counter() - start
            size = sum(
                p.stat().st_size
                for p in (pathlib.Path(folder) / "checkpoints" / str(args.saves)).rglob("*")
                if p.is_file()
            )
            store.close()
        blocking_median = sorted(blocking)[len(blocking) // 2]
        print(
            json.dumps(
                {
                    "async_save": async_save,
                    "saves": args.saves,
                    "blocking_seconds_median": round(blocking_median, 4),
                    "total_seconds_median": round(sorted(total)[len(total) // 2], 4),
                    "restore_seconds": round(restore, 3),
                    "checkpoint_mb": round(size / 2**20, 2),
                    "epoch_slowdown_seconds_if_every_50_steps": round(15 * blocking_median, 2),
                    "backend": jax.default_backend(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
