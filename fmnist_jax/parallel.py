"""The device mesh and how arrays are placed on it: batches split on the "data" axis, state replicated.

This is data parallelism in today's JAX form: one `jax.jit` program over a `Mesh`; XLA inserts the gradient
all-reduce. The same code runs on one CPU, one GPU or TPU chip, several of them, or many hosts.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fmnist_jax import compile_cache, machine
from fmnist_jax.errors import ParallelError, UserError, WorkdirError, brief

DATA_AXIS = "data"


def _multiprocess_variables() -> list[str]:
    """The environment variables that describe a job of several processes (SLURM, Open MPI, TPU pods, ...)."""
    env = os.environ
    found = [v for v in ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS") if env.get(v)]
    # SLURM: the tasks of a job step (srun); an allocation's shell or a batch script counts the allocation's tasks in
    # SLURM_NTASKS but is one process (an interactive step's SLURM_STEP_NUM_TASKS is 1).
    found += [
        v
        for v in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")
        if env.get(v, "1").isdigit() and int(env.get(v, "1")) > 1
    ]
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        found.append("TPU_WORKER_HOSTNAMES")
    return found


def maybe_initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when the environment describes a multi-process job.

    Cluster launchers (SLURM, Open MPI, TPU pods) are detected by JAX itself; a hand-made job sets
    JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID for each process.
    """
    wanted = _multiprocess_variables()
    if not wanted or jax.distributed.is_initialized():
        return
    kwargs = {
        name: int(os.environ[var])
        for name, var in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
        if os.environ.get(var)
    }
    # CPU devices of different processes talk through gloo (the setting is ignored by GPU and TPU).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("Multi-process environment (%s): jax.distributed.initialize(%s)", ", ".join(wanted), kwargs)
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:  # the job's description incomplete, or its coordinator unreachable
        raise ParallelError(
            f"jax.distributed.initialize failed ({brief(e, 300)}); the "
            f"environment's {', '.join(wanted)} describe a multi-process job: start each process under its launcher "
            "(srun, mpirun) or with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or unset them."
        ) from e
    if jax.default_backend() == "cpu":
        # With jax 0.12, gloo's collectives hang unless every process runs a program with the same source locations,
        # compiled in the process: no traceback in the locations (a process started through a wrapper has other
        # frames) and, from the first collective on, no program from the persistent cache.
        jax.config.update("jax_traceback_in_locations_limit", 0)
        compile_cache.set_up(compile_cache.OFF, "cpu")


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A one-axis mesh ("data") over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def run_machine(mesh: Mesh) -> str:
    """What a run's bits depend on beyond its config and data: the devices (on CPUs, their kind:
    `machine.cpu_kind`), how many, in how many processes, and jax's version. results.json and every checkpoint
    record it; a run resumed where it differs trains on, but not to an uninterrupted run's bits."""
    device = mesh.devices.flat[0]
    what = machine.cpu_kind() if device.platform == "cpu" else device.device_kind
    count = f"{mesh.devices.size} device(s) in {jax.process_count()} process(es)"
    return f"{device.platform}: {what}; {count}; jax {jax.__version__}"


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the devices."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, P())


def check_batch_size(
    batch_size: int, mesh: Mesh, *, field: str = "config.batch_size", resuming: pathlib.Path | None = None
) -> None:
    """Raises before any compile if `batch_size` cannot be split evenly over the mesh's devices. `resuming`: the
    checkpoints a run goes on from, whose batch is its own (another would be refused): only the devices can change."""
    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        nearest = sorted({max(n, batch_size // n * n), (batch_size // n + 1) * n})  # one where the batch is below n
        how = f"use a multiple of {n} (e.g. {' or '.join(map(str, nearest))}) or run on fewer devices"
        if resuming is not None:
            how = f"the run in {resuming} trained with it: go on on a number of devices that divides it"
        raise ParallelError(f"{field}={batch_size} cannot be split over {n} devices; {how}.")


def place(tree: Any, sharding: NamedSharding) -> Any:
    """Puts a host pytree on the mesh with `sharding`; across processes each feeds only its own devices."""

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A full copy of a host pytree on every device of `mesh`."""
    return place(tree, replicated(mesh))


def replicated_shapes(tree: Any, mesh: Mesh) -> Any:
    """`tree`'s shapes and dtypes as a full copy on every device of `mesh`, without values (a restore's target)."""
    on_devices = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_devices), tree)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """A host pytree whose leaves hold the global batch, split over the "data" axis."""
    return place(tree, data_sharding(mesh))


def to_host(tree: Any) -> Any:
    """Brings (possibly multi-process) arrays back as NumPy, gathering every shard."""
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def scalars(*xs: jax.Array) -> list[float]:
    """Replicated scalars as Python floats, read together from this process's own copies (works across hosts)."""
    return [float(v) for v in jax.device_get([x.addressable_data(0) for x in xs])]


def scalar(x: jax.Array) -> float:
    """One replicated scalar as a Python float (`scalars`)."""
    return scalars(x)[0]


def max_over_processes(value: int) -> int:
    """The largest of the processes' `value`s, the same on every process (every one must call it at the same point
    of the run: one all-gather); `value` itself in a one-process job."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.asarray(multihost_utils.process_allgather(np.int32(value))).max())


def lead_decides(decision: bool) -> bool:
    """Process 0's `decision`, the same on every process of a multi-process job (each may see other files)."""
    if jax.process_count() == 1:
        return decision
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(decision)))


def lead_shares(value: Any) -> Any:
    """Process 0's JSON-able `value`, the same on every process of a multi-process job (each may see other files)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    text = np.frombuffer(json.dumps(value).encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(text.size)))
    mine = text if jax.process_index() == 0 else np.zeros(size, np.uint8)
    return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(mine), np.uint8).tobytes())


@contextlib.contextmanager
def stop_together(what: str, *, errors: tuple[type[Exception], ...] = (UserError,)) -> Iterator[None]:
    """Within: a refusal (`UserError`) that process 0 may be alone to meet (the workdir's lock, its config.json), or
    one of `errors` (OSError: a write only process 0 makes, on a full disk). Every process of the job raises when
    process 0 did: each its own error, or a WorkdirError saying process 0 stopped (one broadcast in a multi-process
    job; the error itself in a one-process job). Otherwise the others would wait in their next collective until the
    job's time-outs end them with a traceback."""
    error = None
    try:
        yield
    except errors as e:
        error = e
    if lead_decides(error is not None):
        raise error or WorkdirError(f"process 0 stopped the run ({what}); its error says why.")


def lead_writes(what: str):
    """`stop_together` around files only process 0 writes (`what`: "writing the results in DIR"): a refusal or a
    failed write there (a full disk) stops every process, not process 0 alone."""
    return stop_together(what, errors=(UserError, OSError))
