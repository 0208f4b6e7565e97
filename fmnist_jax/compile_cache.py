"""JAX's persistent compilation cache (`config.compilation_cache`): compiled programs kept on disk, so that a later
run of the same model skips compiling them.

"auto" (the default) keeps a cache that JAX was already given (`JAX_COMPILATION_CACHE_DIR`) and otherwise turns one
on for GPU and TPU runs only, in `$XDG_CACHE_HOME/fmnist_jax/xla` (`~/.cache/...`): there a start compiles for
seconds (the study CNN on an H200: 4.4 s of its 28), while on a CPU compiling is a small part of a run and XLA:CPU's
cached programs are tied to the CPU's instruction set (a home folder shared by machines of two CPU kinds would
hold programs for both). "off" turns the cache off; any other value is the folder to keep it in, on any platform.
The cache changes what is compiled never: a program loaded from it is the one that was compiled.
"""

from __future__ import annotations

import os
import pathlib

import jax
from absl import logging

from fmnist_jax.errors import ConfigError

AUTO, OFF = "auto", "off"


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


def resolve(setting: str, platform: str, given: str | None) -> str | None:
    """The folder the run's compiled programs are kept in, None for none: `setting` on `platform` ("cpu", "gpu",
    "tpu"), where JAX was already given the folder `given` (or None)."""
    check(setting)
    if setting == OFF:
        return None
    if setting != AUTO:
        return str(pathlib.Path(setting).expanduser())
    if given:
        return given
    return None if platform == "cpu" else str(default_dir())


def set_up(setting: str, platform: str) -> str | None:
    """Points JAX at the folder `resolve` picks (before the process's first compilation; a later call with the
    folder already in use changes nothing) and returns it. A folder that cannot be made is warned about, and the
    run goes on without a cache."""
    given = jax.config.jax_compilation_cache_dir
    folder = resolve(setting, platform, given)
    if folder is None:
        if given:
            jax.config.update("jax_enable_compilation_cache", False)
        return None
    if folder == given:
        return folder
    try:
        pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        logging.warning("No compilation cache: %s cannot be made (%s); set config.compilation_cache.", folder, e)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # Every program, however quick its compile: a run has about twenty, most under JAX's 1 s default.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    logging.info("Compiled programs are kept in %s (config.compilation_cache=%r).", folder, setting)
    return folder
