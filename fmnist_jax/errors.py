"""The base of every error a user can fix: main.py prints its message as one line and exits 2."""


class UserError(Exception):
    """Bad input, config or environment; the message names the file, field or value and how to fix it."""


class ConfigError(UserError):
    """A config field with a value this code cannot run."""
