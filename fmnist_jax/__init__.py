"""fmnist-jax: the Fashion-MNIST study's CNN in Flax NNX, its scikit-learn baselines, one metrics module.

It runs on Linux; macOS is untested. Native Windows is refused: the package at import, main.py in one line, each
naming WSL 2 (a run locks its workdir with `fcntl.flock` and stops at a safe point on POSIX signals, neither of which
Windows has).
"""

import sys

__version__ = "0.1.0"


def unsupported_platform(platform: str = sys.platform) -> str | None:
    """Why this package cannot run on `platform` (a `sys.platform` value), or None where it can."""
    if platform == "win32":
        return (
            "fmnist-jax does not run on native Windows (it locks its workdirs with fcntl and stops runs on POSIX "
            "signals): run it inside WSL 2, the Windows Subsystem for Linux, as on Linux"
        )
    return None


if (_why := unsupported_platform()) is not None:
    raise ImportError(_why)
