"""JAX's persistent compilation cache (`config.compilation_cache`): compiled programs kept on disk, so that a later
run of the same model skips compiling them.

"auto" (the default) keeps the folder JAX was given (`JAX_COMPILATION_CACHE_DIR`) and otherwise keeps one for GPU
and TPU runs only, `$XDG_CACHE_HOME/fmnist_jax/xla` (`~/.cache/...`): there a start compiles for seconds (the study
CNN on an H200: 4.4 s of compilation in a 28 s run), while on a CPU compiling is a small part of a run and XLA:CPU's
programs are built for the CPU's instruction set (a home folder shared by machines of two CPU kinds would hold
programs for both). "off" keeps none; any other value is the folder, on any platform. A program
loaded from the cache is the one that was compiled: the same bits. A multi-process job on CPUs keeps none, whatever
the setting: with jax 0.12, a program whose collectives span processes (gloo) hangs when it comes from the cache
after one compiled in the process has run (`parallel.maybe_initialize_distributed`).
"""

from __future__ import annotations

import os
import pathlib

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from fmnist_jax.errors import ConfigError

AUTO, OFF = "auto", "off"
MIN_COMPILE_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
_GIVEN: list[str | None] = []  # the folder JAX had before this process's first `set_up`


def default_dir() -> pathlib.Path:
    """`$XDG_CACHE_HOME/fmnist_jax/xla`, or `~/.cache/fmnist_jax/xla`."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "fmnist_jax" / "xla"


def check(setting: str) -> None:
    """Raises ConfigError unless `setting` is "auto", "off" or a folder's path."""
    if not isinstance(setting, str) or not setting.strip():
        raise ConfigError(
            f"config.compilation_cache={setting!r} must be 'auto', 'off' or the folder to keep compiled programs in."
        )


def resolve(setting: str, platform: str, given: str | None, processes: int = 1) -> str | None:
    """The folder the run's compiled programs are kept in, None for none: `setting` on `platform` ("cpu", "gpu",
    "tpu") in a job of `processes`, where JAX was given the folder `given` (or None) before the run."""
    check(setting)
    if setting == OFF or (platform == "cpu" and processes > 1):
        return None
    if setting != AUTO:
        return os.path.expanduser(setting)  # a leading ~ only: a gs:// path stays as it is
    if given:
        return given
    return None if platform == "cpu" else str(default_dir())


def _in_use() -> str | None:
    return jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None


def set_up(setting: str, platform: str) -> str | None:
    """Points JAX at the folder `resolve` picks and returns it. A process's later runs (a comparison's members) may
    pick another: JAX's cache is then reset, so that the next compilation opens the new folder. Every program is
    kept, however quick its compile (unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise): a run has
    about twenty, most under JAX's 1 s default. A local folder that cannot be made is warned about; the run goes on
    without a cache."""
    if not _GIVEN:
        _GIVEN.append(jax.config.jax_compilation_cache_dir or None)
    folder = resolve(setting, platform, _GIVEN[0], jax.process_count())
    if folder is None and setting != OFF and resolve(setting, platform, _GIVEN[0]) is not None:
        logging.info("A multi-process job on CPUs keeps no compiled programs (see config.compilation_cache).")
    if folder is not None and "://" not in folder:
        try:
            pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            logging.warning(
                "%s cannot be made (%s): compiled programs are not kept; see config.compilation_cache.", folder, e
            )
            folder = None
    if folder != _in_use():
        if folder is None:
            jax.config.update("jax_enable_compilation_cache", False)
        else:
            jax.config.update("jax_compilation_cache_dir", folder)
            jax.config.update("jax_enable_compilation_cache", True)
        jax_cache.reset_cache()  # JAX opens its cache once, at the first compilation after this
    if folder is not None:
        if MIN_COMPILE_TIME_ENV not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        logging.info("Compiled programs are kept in %s (config.compilation_cache=%r).", folder, setting)
    return folder
