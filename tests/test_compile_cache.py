"""config.compilation_cache: which folder keeps the compiled programs, on each platform (TPU and GPU by stand-in)."""

import logging
import pathlib

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from fmnist_jax import compile_cache
from fmnist_jax.errors import ConfigError


def test_auto_keeps_a_folder_only_for_accelerators_in_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    expected = str(tmp_path / "fmnist_jax" / "xla")
    assert compile_cache.resolve("auto", "tpu", None) == expected
    assert compile_cache.resolve("auto", "gpu", None) == expected
    assert compile_cache.resolve("auto", "cpu", None) is None
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.resolve("auto", "gpu", "") == str(pathlib.Path.home() / ".cache" / "fmnist_jax" / "xla")


def test_a_folder_jax_was_given_is_kept_by_auto_and_dropped_by_off():
    for platform in ("cpu", "gpu", "tpu"):
        assert compile_cache.resolve("auto", platform, "/given") == "/given"
        assert compile_cache.resolve("off", platform, "/given") is None
        assert compile_cache.resolve("~/mine", platform, "/given") == str(pathlib.Path.home() / "mine")


def test_a_multi_process_job_on_cpus_keeps_no_programs_whatever_the_setting():
    """With jax 0.12, a program whose collectives span processes hangs on CPUs when it comes from the cache after one
    compiled in the process has run (the two-process tests hung on their second run): such a job keeps none; on
    accelerators, or in one process, the setting stands."""
    for setting, given in (("auto", "/given"), ("/mine", None)):
        assert compile_cache.resolve(setting, "cpu", given, 2) is None
        assert compile_cache.resolve(setting, "cpu", given, 1) is not None
        assert compile_cache.resolve(setting, "gpu", given, 2) == compile_cache.resolve(setting, "gpu", given, 1)


@pytest.mark.parametrize("bad", ["", "  ", None, 3])
def test_a_value_that_is_no_folder_is_refused_naming_the_field(bad):
    with pytest.raises(ConfigError, match=r"config.compilation_cache=.* must be 'auto', 'off' or the folder"):
        compile_cache.resolve(bad, "gpu", None)


@pytest.fixture
def jax_cache_restored(monkeypatch):
    """This process's cache settings (the suite's shared folder) put back after the test; `set_up` starts afresh."""
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_enable_compilation_cache")}
    monkeypatch.setattr(compile_cache, "_GIVEN", [])
    yield
    for key, value in saved.items():
        jax.config.update(key, value)
    jax_cache.reset_cache()


def compile_new_program(scale: float) -> None:
    """Compiles (and runs) a program no other test compiles."""
    jax.jit(lambda x: x * scale + 0.5)(np.float32(1)).block_until_ready()


def test_a_process_can_switch_folders_and_turn_the_cache_off_and_on(tmp_path, jax_cache_restored, caplog):
    """A comparison's members run in one process: each one's choice takes effect, JAX's cache reset between."""
    given = jax.config.jax_compilation_cache_dir  # the suite's folder, as JAX_COMPILATION_CACHE_DIR gives it
    assert given and compile_cache.set_up("auto", "cpu") == given
    mine = tmp_path / "mine"
    assert compile_cache.set_up(str(mine), "cpu") == str(mine)
    compile_new_program(1.25)
    kept = sorted(p.name for p in mine.iterdir())
    assert kept  # the program, however quick its compile
    assert compile_cache.set_up("off", "gpu") is None and not jax.config.jax_enable_compilation_cache
    compile_new_program(1.75)
    assert sorted(p.name for p in mine.iterdir()) == kept
    assert compile_cache.set_up("auto", "gpu") == given and jax.config.jax_enable_compilation_cache
    assert compile_cache.set_up(str(mine), "tpu") == str(mine)
    compile_new_program(1.75)
    assert len(list(mine.iterdir())) == len(kept) + 1
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    caplog.set_level(logging.WARNING)
    assert compile_cache.set_up(str(blocked / "xla"), "gpu") is None and not jax.config.jax_enable_compilation_cache
    assert f"{blocked / 'xla'} cannot be made" in caplog.text


@pytest.fixture
def min_compile_time_restored():
    """JAX's least compile time for a kept program, put back after the test."""
    saved = jax.config.jax_persistent_cache_min_compile_time_secs
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved)


def test_every_program_is_kept_unless_the_environment_sets_a_least_compile_time(
    tmp_path, monkeypatch, jax_cache_restored, min_compile_time_restored
):
    """JAX reads JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS into its config: `set_up` keeps the user's value, and
    otherwise keeps every program (a run's are mostly under JAX's 1 s default)."""
    monkeypatch.delenv(compile_cache.MIN_COMPILE_TIME_ENV, raising=False)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    assert compile_cache.set_up(str(tmp_path / "a"), "cpu") == str(tmp_path / "a")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    monkeypatch.setenv(compile_cache.MIN_COMPILE_TIME_ENV, "5")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 5.0)  # what JAX read from it at its import
    assert compile_cache.set_up(str(tmp_path / "b"), "cpu") == str(tmp_path / "b")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 5.0
