"""Runs main.py as one process of a multi-host job that meets a fault the others do not, for test_parallel:

python tests/faulty_main.py unseen-results MAIN_ARGS...  # cannot see the workdir's results.json, as on
                                                         # storage that the hosts do not share
python tests/faulty_main.py unseen-config MAIN_ARGS...   # cannot see its config.json so
python tests/faulty_main.py full-disk:EPOCH MAIN_ARGS... # its writes of history.jsonl fail with a full disk
                                                         # from epoch EPOCH's end on, as when its disk fills
python tests/faulty_main.py full-disk:results MAIN_ARGS...  # its write of the test predictions fails so, after
                                                            # training
python tests/faulty_main.py full-disk:events MAIN_ARGS...   # its last TensorBoard write (the test scores) fails so
python tests/faulty_main.py failed-save:STEP MAIN_ARGS...   # its background save of checkpoint STEP fails once
                                                            # written out (a full disk), as Orbax reports it: when
                                                            # its saves are next waited for
"""

import errno
import pathlib
import runpy
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def full_disk(path) -> OSError:
    """The error a write under `path` meets on a full disk."""
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from fmnist_jax import config_lib, metrics

    fault, _, value = sys.argv[1].partition(":")
    if fault == "unseen-results":
        metrics.RESULTS_FILE = "results.on-another-host.json"
    elif fault == "unseen-config":
        config_lib.CONFIG_FILE = "config.on-another-host.json"
    elif fault == "full-disk" and value == "events":
        from fmnist_jax import events

        def finish_onto_a_full_disk(writer, *args, **kwargs):
            raise full_disk(writer.directory)

        events.EventWriter.finish = finish_onto_a_full_disk
    elif fault == "full-disk" and value == "results":

        def save_onto_a_full_disk(workdir, **arrays):
            raise full_disk(pathlib.Path(workdir) / metrics.PREDICTIONS_FILE)

        metrics.save_predictions = save_onto_a_full_disk
    elif fault == "failed-save":
        from fmnist_jax import checkpoints

        failing_step, save = int(value), checkpoints.CheckpointStore.save

        def save_then_fail(self, step, state, meta):
            save(self, step, state, meta)
            if step != failing_step:
                return
            failures, wait = [full_disk(self.directory / str(step))], self.manager.wait_until_finished

            def failed():  # raised once, as Orbax raises a save's error
                wait()
                if failures:
                    raise failures.pop()

            self.manager.wait_until_finished = failed

        checkpoints.CheckpointStore.save = save_then_fail
    elif fault == "full-disk":
        epoch, append = int(value), metrics.append_history

        def append_until_full(workdir, record):
            if record["epoch"] >= epoch:
                raise full_disk(pathlib.Path(workdir) / metrics.HISTORY_FILE)
            append(workdir, record)

        metrics.append_history = append_until_full
    else:
        sys.exit(
            f"unknown fault {sys.argv[1]!r}: unseen-results, unseen-config, full-disk:EPOCH, full-disk:results, "
            "full-disk:events or failed-save:STEP"
        )
    sys.argv = [str(ROOT / "main.py"), *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
