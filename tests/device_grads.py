"""The first train step's gradient of the study's CNN on the tiny data, on 1 device and on N devices of this
process: `XLA_FLAGS=--xla_force_host_platform_device_count=N python tests/device_grads.py DATA_DIR`. Prints
JSON, one row per parameter: its largest gradient and the largest difference between the two."""

import json
import pathlib
import sys

import fingerprints
import jax
import numpy as np
from flax import nnx

from fmnist_jax import data, parallel
from fmnist_jax.training import state as train_state
from fmnist_jax.training import step as steps


def first_gradient(config, dataset, mesh) -> dict:
    """The gradient of step 0 (batch 0 of epoch 0, its dropout key) with the batch split over `mesh`."""
    steps_per_epoch = len(dataset.train) // config.batch_size
    graphs, state, _ = train_state.create_train_state(config, steps_per_epoch)
    state = parallel.replicate(state, mesh)
    roots = train_state.RandomRoots.from_seed(config.seed, augment=False)
    order = steps.epoch_permutation(roots.data, 0, len(dataset.train))[: config.batch_size]
    images, labels = parallel.shard_batch((dataset.train.images[order], dataset.train.labels[order]), mesh)

    @jax.jit
    def gradient(state, images, labels):
        model, _ = graphs.merge(state)
        key = jax.random.fold_in(roots.dropout, 0)
        _, grads = nnx.value_and_grad(steps.loss_fn, has_aux=True)(model, steps.to_inputs(images), labels, key, 0.0)
        return grads

    return parallel.to_host(gradient(state, images, labels))


def main() -> None:
    config = fingerprints.tiny_config(pathlib.Path(sys.argv[1]))
    dataset = data.load(config.data, seed=config.seed)
    one = first_gradient(config, dataset, parallel.make_mesh(jax.devices()[:1]))
    many = first_gradient(config, dataset, parallel.make_mesh())
    rows = []
    for (path, g1), gn in zip(jax.tree_util.tree_flatten_with_path(one)[0], jax.tree.leaves(many), strict=True):
        a, b = np.asarray(g1, np.float64), np.asarray(gn, np.float64)
        rows.append({"parameter": jax.tree_util.keystr(path), "largest": np.abs(a).max(), "diff": np.abs(a - b).max()})
    print(json.dumps({"devices": jax.device_count(), "rows": rows}))


if __name__ == "__main__":
    main()
