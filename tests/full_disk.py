"""Runs main.py as a process whose writes of history.jsonl fail with a full disk from epoch EPOCH's end on, as
process 0 of a multi-host job would when its disk fills: `python tests/full_disk.py EPOCH MAIN_ARGS...`."""

import errno
import pathlib
import runpy
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from fmnist_jax import metrics

    epoch, append = int(sys.argv[1]), metrics.append_history

    def append_until_full(workdir, record):
        if record["epoch"] >= epoch:
            raise OSError(errno.ENOSPC, "No space left on device", str(pathlib.Path(workdir) / metrics.HISTORY_FILE))
        append(workdir, record)

    metrics.append_history = append_until_full
    sys.argv = [str(ROOT / "main.py"), *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
