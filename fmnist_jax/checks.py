"""A config value in its range, or a ConfigError that names the field, its value and the range."""

from __future__ import annotations

import math

import ml_collections

from fmnist_jax.config_lib import get
from fmnist_jax.errors import ConfigError


def positive(config: ml_collections.ConfigDict, *fields: str, allow_zero: bool = False) -> None:
    """Raises ConfigError naming the first of `fields` (dotted paths) that is not a positive number."""
    for field in fields:
        value = get(config, field)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
            bound = "zero or more" if allow_zero else "positive"
            finite = "finite and " if number and not math.isfinite(value) else ""
            raise ConfigError(f"config.{field}={value!r} must be {finite}{bound}.")


MAX_SEED = 2**31 - 1  # JAX takes a seed as an int32 argument; scikit-learn's random_state below 2**32


def seed(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError where `config.seed` is not an integer from 0 to MAX_SEED."""
    value = config.seed
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"config.seed={value!r} must be an integer from 0 to {MAX_SEED} (2**31 - 1).")


def fraction(config: ml_collections.ConfigDict, *fields: str, note: str = "") -> None:
    """Raises ConfigError naming the first of `fields` (dotted paths) that is not in [0, 1); `note` follows the
    bound in the message (" (0 turns it off)")."""
    positive(config, *fields, allow_zero=True)
    for field in fields:
        if (value := get(config, field)) >= 1:
            raise ConfigError(f"config.{field}={value!r} must be below 1{note}.")
