r"""Runs main.py and interrupts it from inside at a chosen checkpoint, however fast the device is.

    python tests/interrupt.py SIGNAL STEP WHEN MAIN_ARGS...

Once `CheckpointStore.save` is called for a step >= STEP, the process sends itself SIGNAL (KILL, TERM or INT):
WHEN=in_flight right after the save has started (asynchronous, its commit held back), WHEN=committed once that save
is complete. With WHEN=epoch, STEP counts epochs instead: the signal follows the end of epoch STEP (its history
line and events written, whatever the checkpoints). With WHEN=compile (STEP ignored), the signal comes as the
compilation of the run's programs starts, before any step is trained. Signalling from outside once a checkpoint
appears races the run, and a fast accelerator finishes a tiny run before the signal lands; from inside, the moment
is the same on every device. With WHEN=step, the signal comes once the train call that reaches step STEP or beyond
has been queued, mid-epoch if STEP is; with WHEN=ran, from another thread once that call has run, as a signal from
outside comes while the host waits for the devices. For comparisons: WHEN=fit, as the STEP-th baseline fit begins
(1: the first baseline member's); WHEN=report, once the report's STEP-th plot is written (the report half-written);
WHEN=scoring (STEP ignored), as the final scoring is about to write results.json, after training; WHEN=release (STEP
ignored), as training's signal guard is about to be released for the final scoring (caught by it, never heard).
"""

import os
import pathlib
import runpy
import signal
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    name, at_step, when, *main_args = sys.argv[1:]
    whens = ("in_flight", "committed", "epoch", "compile", "step", "ran", "fit", "report", "scoring", "release")
    if when not in whens:
        raise SystemExit(f"WHEN must be one of {', '.join(whens)}, got {when!r}")
    signum, at_step = signal.Signals[f"SIG{name}"], int(at_step)
    sys.path.insert(0, str(ROOT))
    from fmnist_jax import checkpoints
    from fmnist_jax.training import loop, step

    sent = []  # the signal goes once (a STOP, continued, must not stop the run again)
    if when in ("fit", "report"):
        if when == "fit":
            from fmnist_jax import baselines as module

            attribute = "fit"
        else:
            from fmnist_jax.report import plots as module

            attribute = "_save"
        wrapped, calls = getattr(module, attribute), []

        def signal_at_the_call(*args, **kwargs):  # a fit: before it; a plot: once written
            calls.append(1)
            out = wrapped(*args, **kwargs) if when == "report" else None
            if len(calls) >= at_step and not sent:
                sent.append(len(calls))
                os.kill(os.getpid(), signum)
            return out if when == "report" else wrapped(*args, **kwargs)

        setattr(module, attribute, signal_at_the_call)
    elif when == "scoring":
        from fmnist_jax import metrics

        save_results = metrics.save_results

        def signal_then_save(*args, **kwargs):
            if not sent:
                sent.append(0)
                os.kill(os.getpid(), signum)
            return save_results(*args, **kwargs)

        metrics.save_results = signal_then_save
    elif when == "release":
        from fmnist_jax import preemption

        release = preemption.PreemptionGuard.release

        def signal_then_release(guard, *args, **kwargs):
            if not sent and guard._previous:  # its handlers still in place: the guard catches the signal
                sent.append(0)
                os.kill(os.getpid(), signum)
            return release(guard, *args, **kwargs)

        preemption.PreemptionGuard.release = signal_then_release
    elif when == "compile":
        compile_ahead = step.Programs.compile_ahead

        def signal_then_compile(programs, *args, **kwargs):
            if not sent:
                sent.append(0)
                os.kill(os.getpid(), signum)
            return compile_ahead(programs, *args, **kwargs)

        step.Programs.compile_ahead = signal_then_compile
    elif when in ("step", "ran"):
        import threading

        import jax

        train = step.Programs.train

        def signal_once_run(done):  # the thread waits for the call's copy of its loss sum (the state is donated)
            jax.block_until_ready(done)
            os.kill(os.getpid(), signum)

        def train_then_signal(programs, num_steps):
            call = train(programs, num_steps)

            def call_then_signal(state, inputs, first_step, first_batch):
                out = call(state, inputs, first_step, first_batch)
                if int(first_step) + num_steps >= at_step and not sent:
                    sent.append(int(first_step) + num_steps)
                    if when == "step":
                        os.kill(os.getpid(), signum)
                    else:
                        threading.Thread(target=signal_once_run, args=(out.loss_sum.copy(),), daemon=True).start()
                return out

            call_then_signal.lower = getattr(call, "lower", None)  # compile_ahead lowers what `train` returns
            return call_then_signal

        step.Programs.train = train_then_signal
    elif when == "epoch":
        finish_boundary = loop.finish_boundary

        def finish_boundary_then_signal(plan, store, writer, boundary, *args):
            out = finish_boundary(plan, store, writer, boundary, *args)
            if boundary.epoch is not None and boundary.epoch.index + 1 >= at_step and not sent:
                sent.append(boundary.epoch.index + 1)
                os.kill(os.getpid(), signum)
            return out

        loop.finish_boundary = finish_boundary_then_signal
    else:
        save = checkpoints.CheckpointStore.save

        def save_then_signal(store, step, state, meta):
            if when == "in_flight" and step >= at_step and not sent:
                store.wait()  # the saves before it complete (this save would wait for them)
                hold_the_commit()
            save(store, step, state, meta)
            if step >= at_step and not sent:
                if when == "committed":
                    store.wait()
                sent.append(step)
                os.kill(os.getpid(), signum)

        checkpoints.CheckpointStore.save = save_then_signal
    sys.argv = [str(ROOT / "main.py"), *main_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


def hold_the_commit() -> None:
    """Makes every later checkpoint save stop before its commit (the rename of its folder, or its commit file), so
    that the signal lands while the save is in flight however fast the disk: else a small save could finish in the
    instant before it. The commit waits in the save's background thread for ever; in a save on the main thread (not
    asynchronous) it raises instead of hanging the run."""
    import asyncio
    import threading

    from orbax.checkpoint import path

    async def never_commit(self, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("interrupt.py in_flight needs an asynchronous save (config.checkpoint.async_save)")
        await asyncio.Event().wait()

    for temporary_path in (path.atomicity.AtomicRenameTemporaryPath, path.atomicity.CommitFileTemporaryPath):
        temporary_path.finalize = never_commit


if __name__ == "__main__":
    main()
