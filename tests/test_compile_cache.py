"""config.compilation_cache: which folder keeps the compiled programs, on each platform (TPU and GPU by stand-in)."""

import pathlib

import pytest

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


@pytest.mark.parametrize("bad", ["", "  ", None, 3])
def test_a_value_that_is_no_folder_is_refused_naming_the_field(bad):
    with pytest.raises(ConfigError, match=r"config.compilation_cache=.* must be 'auto', 'off' or the folder"):
        compile_cache.resolve(bad, "gpu", None)
