"""Dispatch on `config.kind` and `config.mode`: what main.py runs, and what a comparison runs per member."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
import sys
from collections.abc import Callable, Collection, Iterator
from typing import Any

import ml_collections
from absl import logging

from fmnist_jax import checks, config_lib, data, files, metrics, predict
from fmnist_jax.errors import LOG_FILE_ONLY, CheckpointError, ConfigError, Interrupted

KINDS = ("cnn", "baseline", "compare")
MODES = ("train", "evaluate", "predict")


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, given: Collection[str] | None = None) -> Any:
    """Runs `config` in `workdir`: train returns the results dict, evaluate too, predict the rows printed.

    `evaluate` and `predict` take the model (and data) fields that `given` does not name from the trained run's
    config.json (`given`: the fields set on the command line; None: all, so that each must match).

    The workdir is locked for the run (in a multi-process job by process 0, the one that writes); a full disk
    anywhere below surfaces as one `files.DiskFull` error that names the workdir. A run without JAX (a baseline, a
    comparison of baselines alone) launched on several ranks runs in the first alone: the others return None.
    """
    kind, mode = config.get("kind"), config.mode
    if kind not in KINDS:
        raise ConfigError(f"config.kind={kind!r} is not one of {KINDS}.")
    if mode not in MODES:
        raise ConfigError(f"config.mode={mode!r} is not one of {MODES}.")
    readers = {"predict.": ("predict",), "checkpoint.step": ("evaluate", "predict")}  # fields one mode alone reads
    if unread := sorted(f for f in given or () for k, m in readers.items() if f.startswith(k) and mode not in m):
        modes = " or ".join(next(m for k, m in readers.items() if unread[0].startswith(k)))
        doing = "trains" if mode == "train" else f"runs {mode}"
        raise ConfigError(
            f"--config.{unread[0]} is read by --config.mode={modes} alone, and this command {doing}: set that mode, or "
            "drop the field."
        )
    workdir = pathlib.Path(workdir)
    if mode != "train" and kind != "compare" and (trouble := _not_a_run(workdir)):  # before the lock makes or marks it
        raise ConfigError(
            f"--workdir={workdir} {trouble}: {mode} reads a trained run's folder; check the path, or train first."
        )
    uses_jax = kind == "cnn" or (
        kind == "compare" and any(m.enabled and m.kind == "cnn" for m in config.members.values())
    )
    if uses_jax:
        from fmnist_jax import parallel  # JAX only when needed

        parallel.maybe_initialize_distributed()  # first: which process leads is JAX's to say from here on
    elif "jax" not in sys.modules and not files.is_lead_process():  # scikit-learn alone, launched on several ranks
        logging.info(
            "A process other than the first of a multi-process job (%s): a %s run is one process's, and the first "
            "runs it in %s; nothing to do here.",
            files.rank_description(),
            kind,
            workdir,
        )
        return None
    made = files.outermost_missing(workdir)  # the folder the lock's making of `workdir` will make first, or None
    with contextlib.ExitStack() as lock:
        if "jax" in sys.modules:  # joined above, or a comparison's baseline member: its processes stop together
            from fmnist_jax import parallel

            agreed = parallel.stop_together(f"the workdir {workdir} could not be locked")
        else:
            agreed = contextlib.nullcontext()
        # The lock, held by the process that writes; `predict` reads a run it cannot write (an archive) unlocked.
        locks = files.is_lead_process() and (mode != "predict" or files.writable(workdir))
        with agreed:
            locked_at = lock.enter_context(files.workdir_lock(workdir) if locks else contextlib.nullcontext())
        if made and files.is_lead_process():  # once locked (a run refused the lock must not touch the folder)
            lock.enter_context(_removed_if_unused(workdir, made))  # exits before the lock is released
        try:
            if locked_at is not None:  # alone in the workdir: what a killed start left half-done goes first
                files.undo_killed_writes(
                    locked_at, workdir, workdir / config_lib.CHECKPOINTS_DIR, replaced=(config_lib.CONFIG_FILE,)
                )
            if kind == "cnn":
                return _run_cnn(config, workdir, mode, given)
            if kind == "compare":
                return _run_compare(config, workdir, given)
            return _run_baseline(config, workdir, mode, given)
        except Exception as e:
            if files.is_disk_full(e) and not isinstance(e, files.DiskFull):
                doing = "saving a checkpoint" if isinstance(e, CheckpointError) else "writing its files"
                logging.warning("The full disk's error: %s: %s", type(e).__name__, e, extra=LOG_FILE_ONLY)
                raise files.disk_full_error(workdir, doing) from e
            raise


def _took_new_fields(before: dict | None, after: dict | None) -> bool:
    """Whether a member's config.json changed in what it computes (a reused run's operational fields do not count)."""
    return (before is None) != (after is None) or bool(before and after and config_lib.diff(before, after))


def _not_a_run(workdir: pathlib.Path) -> str | None:
    """Why `workdir` holds no run to evaluate or predict with (None where it may): a run's folder holds its
    config.json, its checkpoints or its fitted model (a copy may lack its config.json)."""
    if why := files.not_a_folder(workdir, "a run's folder"):
        return f"is {why}"
    if not workdir.is_dir():
        return "does not exist"
    marks = (config_lib.CONFIG_FILE, config_lib.CHECKPOINTS_DIR, config_lib.MODEL_FILE)
    if not any((workdir / mark).exists() for mark in marks):
        return f"holds no run (no {', '.join(marks[:-1])} or {marks[-1]})"
    return None


@contextlib.contextmanager
def _removed_if_unused(workdir: pathlib.Path, made: pathlib.Path) -> Iterator[None]:
    """Removes `workdir`, which this run made (with its parents up to `made`) and locked, if the `with` fails before
    it kept anything but its lock and config.json (and empty folders), and then those parents while they are empty: a
    command refused for a bad setting or missing data leaves no folder behind. A signal (`Interrupted`, Ctrl-C)
    leaves it as it is: its line says to rerun the same command there."""
    try:
        yield
    except Interrupted:
        raise
    except Exception:
        with contextlib.suppress(OSError):
            if _unused(workdir):
                files.remove_made(workdir, made)
        raise


def _unused(workdir: pathlib.Path) -> bool:
    """Whether `workdir` holds only its lock, config.json and empty folders: stricter than `config_lib.kept_nothing`
    (which lets a rerun replace config.json), since this removes the folder with whatever else it holds."""
    return all(
        p.name in config_lib.NOTHING_COMPUTED or (p.is_dir() and not any(p.iterdir())) for p in workdir.iterdir()
    )


def _run_cnn(config: ml_collections.ConfigDict, workdir: pathlib.Path, mode: str, given: Collection[str] | None) -> Any:
    import jax  # JAX only when needed

    from fmnist_jax import compile_cache, parallel
    from fmnist_jax.training import evaluate, loop, state

    state.check_config(config)
    compile_cache.set_up(config.compilation_cache, jax.default_backend())
    if mode == "train":
        return loop.train_and_evaluate(config, workdir)
    taken = {}
    with parallel.stop_together(f"{workdir} was trained with another config"):
        taken = config_lib.trained_fields(config, workdir, evaluate=mode == "evaluate", given=given)
    config_lib.take(config, parallel.lead_shares(taken), workdir)  # process 0's reading, on every process
    if mode == "evaluate":
        return evaluate.evaluate_checkpoint(config, workdir)
    images, names, output = predict.inputs_and_output(config, workdir)
    probs = evaluate.predict_images(config, workdir, images)
    return predict.report(output, names, probs, probs.argmax(-1))


def _run_baseline(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, mode: str, given: Collection[str] | None
) -> Any:
    from fmnist_jax import baselines

    baselines.check_config(config)
    if mode == "train":
        replaced = config_lib.save_or_check(config, workdir)
        with config_lib.put_back_unless_accepted(workdir, replaced) as accept:
            return baselines.fit_and_evaluate(config, workdir, accept)
    config_lib.take(
        config, config_lib.trained_fields(config, workdir, evaluate=mode == "evaluate", given=given), workdir
    )
    if mode == "evaluate":
        estimator = baselines.load_estimator(workdir)
        return baselines.score_saved(config, workdir, estimator, data.load(config.data, seed=config.seed))
    images, names, output = predict.inputs_and_output(config, workdir)
    preds, probs = baselines.predict(baselines.load_estimator(workdir), baselines.flatten(images))
    return predict.report(output, names, probs, preds)


@dataclasses.dataclass(frozen=True)
class MemberRun:
    """One seed of one comparison member: its own config and workdir."""

    name: str
    seed: int
    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    named: bool  # a workdir the user named: a finished run there is reported as it is


def member_runs(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, given: Collection[str] | None = None
) -> list[MemberRun]:
    """Every enabled member once per seed, in the study's order: its config (seed and, with quick=True, the quick
    overrides applied, but for a member's field the command line set: `given`, main.py's flags; None, a config built
    in Python: quick's values apply throughout) and its workdir, WORKDIR/<member>/seed_<seed> unless the member names
    one."""
    seeds = tuple(config.seeds)
    if (
        not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= checks.MAX_SEED for s in seeds)
    ):
        raise ConfigError(
            f"config.seeds={config.seeds!r} must be distinct integers from 0 to {checks.MAX_SEED}, e.g. "
            "--config.seeds=0,1,2."
        )
    order = {"cnn": 0, "random_forest": 1, "linear_svm": 2}  # the study's order, other members after
    runs = []
    for name, section in sorted(config.members.items(), key=lambda item: (order.get(item[0], 9), item[0])):
        if not section.enabled:
            continue
        named = section.workdir
        if named and len(seeds) > 1 and "{seed}" not in named:
            raise ConfigError(
                f"config.members.{name}.workdir={named!r} names one folder for {len(seeds)} seeds; put {{seed}} in "
                f"it (e.g. {named}_seed{{seed}}) or run one seed."
            )
        quick = _quick_overrides(config, name, given)
        for seed in seeds:
            member = ml_collections.ConfigDict(section.to_dict())  # an unlocked copy
            del member["workdir"], member["enabled"]
            member.seed = seed
            config_lib.merge(member, quick)
            try:
                folder = pathlib.Path(named.format(seed=seed)) if named else workdir / name / f"seed_{seed}"
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(
                    f"config.members.{name}.workdir={named!r}: only {{seed}} may stand in braces ({e!r}); write "
                    "a literal brace as {{ or }}."
                ) from e
            runs.append(MemberRun(name, seed, member, folder, bool(named)))
    if not runs:
        raise ConfigError(
            f"config.members: none is enabled ({', '.join(config.members)}); enable one, e.g. "
            "--config.members.cnn.enabled=True."
        )
    folders: dict[pathlib.Path, MemberRun] = {}
    for member in runs:  # before anything trains: two runs in one folder would refuse, or report, each other
        if (other := folders.setdefault(member.workdir.resolve(), member)) is not member:
            raise ConfigError(
                f"config.members.{other.name} (seed {other.seed}) and config.members.{member.name} (seed "
                f"{member.seed}) name one folder, {member.workdir}: give each its own workdir."
            )
    return runs


def _check_member(member: MemberRun) -> None:
    """The member's own config checks, before anything trains: a field that cannot run is named as the member's
    (config.members.NAME.FIELD), not found after the members before it have trained."""
    if member.config.kind == "cnn":
        from fmnist_jax.training import state  # JAX, which a CNN member imports anyway

        check = state.check_config
    else:
        from fmnist_jax import baselines

        check = baselines.check_config
    try:
        check(member.config)
    except ConfigError as e:
        message = config_lib.as_fields_of(str(e), f"config.members.{member.name}")
        own = f"config.members.{member.name}."
        raise ConfigError(message if message.startswith(own) else f"{own.rstrip('.')}: {message}") from e


def _check_named(member: MemberRun, workdir: pathlib.Path, checksums: Callable[[Any], dict[str, str]]) -> bool:
    """Whether the named folder of `member` holds its finished run, checked before anything trains: a folder that
    does not exist (a typo would start a whole run there) or a run of another seed is an error; a run trained with
    settings other than its member's, or whose settings are unknown (no config.json), or on other training files, is
    reported with a warning; one of another model, or scored on other test images than the member's data
    (`checksums` of its config.data: the files' SHA-256), is an error."""
    where = f"config.members.{member.name}.workdir: {member.workdir}"
    if not member.workdir.exists():
        raise ConfigError(
            f"{where} does not exist; name the folder of a finished (or interrupted) run, or leave it unset to "
            f"train in {workdir / member.name}/seed_<seed>."
        )
    if not (member.workdir / metrics.RESULTS_FILE).exists():
        return False  # an interrupted run: it resumes there
    results = metrics.load_results(member.workdir)
    if results["model"] != member.config.model.name:
        raise ConfigError(
            f"{where} holds a run of the model {results['model']!r}, not {member.name}'s {member.config.model.name!r}; "
            f"name a folder of {member.name}'s runs, or leave it unset to train in {workdir / member.name}/seed_<seed>."
        )
    found = results["seed"]
    if found != member.seed:
        raise ConfigError(
            f"{where} holds a run of seed {found}, not {member.seed}; name one folder per seed with {{seed}} or set "
            f"--config.seeds={found}."
        )
    recorded = {k: v for k, v in (results.get("dataset_checksums") or {}).items() if not k.endswith(".gz")}  # content's
    now = checksums(member.config.data)
    differ, how = data.differing(recorded, now), data.what_differs(recorded, now)
    if data.other_source(recorded, now) or any(name.startswith("t10k") for name in differ):
        raise ConfigError(
            f"{where} was scored on other test images than the comparison's data ({how}), so it cannot be paired with "
            f"the other members; name a run on the same data, or leave it unset to train in {workdir / member.name}"
            "/seed_<seed>."
        )
    saved = member.workdir / config_lib.CONFIG_FILE
    unlike = f"was trained on other files ({how})" if differ else None
    if not saved.exists():
        unlike = ", and ".join(filter(None, [unlike, "has no config.json: its settings unknown"]))
    elif changed := config_lib.diff(config_lib.read_saved(saved), config_lib.to_dict(member.config)):
        listing = ", ".join(f"{k}: {old!r} (member: {new!r})" for k, (old, new) in changed.items())
        unlike = ", and ".join(filter(None, [unlike, f"was trained with other settings ({listing})"]))
    if unlike:
        logging.warning("%s, seed %d: %s %s; reported as it is.", member.name, member.seed, member.workdir, unlike)
    return True


def _files_only(source: str, folder: str | None) -> ml_collections.ConfigDict:
    """A data section that reads `source`'s files from `folder` and splits off nothing (`data.load`)."""
    return ml_collections.ConfigDict({"source": source, "dir": folder, "validation_size": 0, "num_train": None})


def _quick_overrides(config: ml_collections.ConfigDict, name: str, given: Collection[str] | None) -> dict[str, Any]:
    """What quick=True sets in member `name` (nested, for `config_lib.merge`): its quick_overrides, less the fields
    the command line set for the member (--config.members.NAME.FIELD), which win and are said to."""
    if not (config.quick and name in config.quick_overrides):
        return {}
    quick = config.quick_overrides[name].to_dict()
    kept = [k for k in config_lib.flatten(quick) if given and config_lib.flag_setting(f"members.{name}.{k}", given)]
    for field in kept:
        *sections, key = field.split(".")
        inner = quick
        for section in sections:
            inner = inner[section]
        del inner[key]
    if kept:
        values = ", ".join(f"{k}={config_lib.get(config.members[name], k)!r}" for k in kept)
        logging.info("%s: quick=True keeps the command line's %s over quick_overrides.%s", name, values, name)
    return quick


def _run_compare(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, given: Collection[str] | None
) -> dict[str, dict[int, Any]]:
    """Runs every member's seeds that have no finished run yet, then builds the report from all of them;
    returns each member's results by seed."""
    from fmnist_jax import report
    from fmnist_jax.report import sentences, tables

    if config.mode != "train":
        raise ConfigError("a comparison only trains and reports: run evaluate/predict on a member's workdir.")
    runs = member_runs(config, workdir, given)
    # Each data section's files read once, only where a named member's finished run is there to check against them.
    checksums = functools.cache(lambda source, folder: dict(data.load(_files_only(source, folder), seed=0).checksums))
    check_named = functools.partial(_check_named, checksums=lambda d: checksums(d.source, d.dir))
    if "jax" in sys.modules and sys.modules["jax"].process_count() > 1:  # a job (joined by `run`): process 0 decides
        from fmnist_jax import parallel

        lead = files.is_lead_process()
        with parallel.stop_together("a member's named folder"):  # it alone may see them
            found = [bool(m.named and check_named(m, workdir)) for m in runs] if lead else [False] * len(runs)
        reused = [parallel.lead_decides(finished) for finished in found]
    else:
        reused = [member.named and check_named(member, workdir) for member in runs]  # before anything trains
    to_run = [member for member, finished in zip(runs, reused, strict=True) if not finished]
    if any(member.config.kind == "cnn" for member in to_run):
        from fmnist_jax import timing  # JAX, which a CNN member imports anyway

        timing.start_up()  # the process's start-up is the comparison's: no member's seconds (before_run) hold it
    for member in {m.name: m for m in to_run}.values():  # each member's config once (seeds differ in the seed)
        _check_member(member)
    lead = files.is_lead_process()  # it alone writes config.json; every process checks it, as each member's run
    # Not undoable after a kill: a member may have taken the new fields by then (they stand where one did).
    replaced = config_lib.save_or_check(config, workdir, write=lead, undoable=False)
    members_before = {member.workdir: config_lib.saved_or_none(member.workdir) for member in to_run}
    with config_lib.put_back_unless_accepted(workdir, replaced) as accept:
        try:
            for member, finished in zip(runs, reused, strict=True):
                if finished:
                    logging.info(
                        "%s, seed %d: reusing the finished run in %s", member.name, member.seed, member.workdir
                    )
                else:  # on every process, baselines too: none may end early, JAX's exit waits for all of them
                    logging.info("%s, seed %d: running in %s", member.name, member.seed, member.workdir)
                    run(member.config, member.workdir)
        finally:  # a member that took new fields keeps them in the comparison's; members all as they were: put back
            if any(
                _took_new_fields(before, config_lib.saved_or_none(folder)) for folder, before in members_before.items()
            ):
                accept()
    paths = report.build([member.workdir for member in runs], workdir)
    logging.info("Report: %s, %s and %s", paths["markdown"], paths["html"], paths["json"])
    results: dict[str, dict[int, Any]] = {}
    for member in runs:
        results.setdefault(member.name, {})[member.seed] = metrics.load_results(member.workdir)
    for name, by_seed in results.items():  # the scores on screen, the report's first table in short
        accuracy = tables.mean_std([r["test_accuracy"] for r in by_seed.values()])
        logging.info("%s: test accuracy %s (%s)", name, accuracy, sentences.seed_list(list(by_seed)))
    return results
