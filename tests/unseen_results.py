"""Runs main.py as a process that cannot see the workdir's results.json, as a process of a multi-host job on
storage that is not shared would: `python tests/unseen_results.py MAIN_ARGS...`."""

import pathlib
import runpy
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from fmnist_jax import metrics

    metrics.RESULTS_FILE = "results.on-another-host.json"
    sys.argv = [str(ROOT / "main.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
