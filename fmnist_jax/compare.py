"""A comparison: its members once per seed, each in its own workdir (`run.run`), checked before anything trains
(their configs, the finished runs named for them, the data they read), then the report of them all."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Collection, Mapping
from typing import Any

import ml_collections
from absl import logging

from fmnist_jax import checks, checksums, config_lib, data, files, metrics, run
from fmnist_jax.errors import ConfigError


def _took_new_fields(before: dict | None, after: dict | None) -> bool:
    """Whether a member's config.json changed in what it computes (a reused run's operational fields do not count)."""
    return (before is None) != (after is None) or bool(before and after and config_lib.diff(before, after))


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
            _merge(member, quick)
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
    (config.members.NAME.FIELD), not found after the members before it have trained; a CNN's also on this machine's
    devices (a batch they cannot split, host overlap over several CPU devices)."""
    if member.config.kind == "cnn":
        from fmnist_jax.training import state  # JAX, which a CNN member imports anyway

        check = functools.partial(_check_cnn, state.check_config, member)
    else:
        from fmnist_jax import baselines

        check = baselines.check_config
    try:
        check(member.config)
    except ConfigError as e:
        message = config_lib.as_fields_of(str(e), f"config.members.{member.name}")
        own = f"config.members.{member.name}."
        raise ConfigError(message if message.startswith(own) else f"{own.rstrip('.')}: {message}") from e


def _check_cnn(check_config: Callable, member: MemberRun, config: ml_collections.ConfigDict) -> None:
    """A CNN member's `check_config`, then what its run checks on the devices before training (`plan.check_devices`)."""
    from fmnist_jax import parallel
    from fmnist_jax.training import plan

    check_config(config)
    plan.check_devices(config, member.workdir, parallel.make_mesh(), prefix=f"config.members.{member.name}")


def _check_named(member: MemberRun, workdir: pathlib.Path) -> bool:
    """Whether the named folder of `member` holds its finished run, checked before anything trains: a folder that
    does not exist (a typo would start a whole run there) or a run of another seed is an error; a run trained with
    settings other than its member's, or whose settings are unknown (no config.json), is reported with a warning; one of
    another model is an error. Its data are checked with the others' (`_check_data`)."""
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
    saved = member.workdir / config_lib.CONFIG_FILE
    unlike = None
    if not saved.exists():
        unlike = "has no config.json: its settings unknown"
    elif changed := config_lib.diff(config_lib.read_saved(saved), config_lib.to_dict(member.config)):
        listing = ", ".join(f"{k}: {old!r} (member: {new!r})" for k, (old, new) in changed.items())
        unlike = f"was trained with other settings ({listing})"
    if unlike:
        logging.warning("%s, seed %d: %s %s; reported as it is.", member.name, member.seed, member.workdir, unlike)
    return True


def _check_data(reused: list[MemberRun], trained: list[MemberRun], workdir: pathlib.Path) -> None:
    """Refuses, before anything trains, runs that would be scored on other test images (their pairs could not be
    tested, and the report refused them once every member had trained): members whose data sections read other
    test files, or a finished run named for a member scored on other test images than the members trained here read;
    a named run trained on other files than those is reported, with a warning. Where nothing trains, the named runs
    are held, for both, against the first of them that recorded its files' content. Each data section's files are
    read once, and only where there is something to compare: members to train, and several data sections or runs
    reused."""
    sections: dict[tuple[str, str | None], MemberRun] = {}  # each data section with the first member that reads it
    for member in trained:
        folder = member.config.data.dir
        sections.setdefault(
            (member.config.data.source, str(pathlib.Path(folder).expanduser()) if folder else None), member
        )
    if not trained:  # the named runs against the first of them that recorded its files' content: records only
        first = next((m for m in reused if checksums.by_content(_recorded(m))), None)
        if first is None:
            return
        reused = [member for member in reused if member is not first]
        here, than = _recorded(first), f"{first.name}'s run in {first.workdir} read"
    elif len(sections) == 1 and not reused:
        return
    else:
        read = {key: dict(data.load(_files_only(*key), seed=0).checksums) for key in sections}
        (key, here), *others = read.items()
        for other, sums in others:
            if how := checksums.other_test_images(here, sums):
                a, b = sections[key].name, sections[other].name
                raise ConfigError(
                    f"config.members.{a} and config.members.{b} read other test images ({how}), so their runs could "
                    "not be paired: give every member the same config.data.source and config.data.dir."
                )
        than = "the members trained here read"
    for member in reused:
        recorded = _recorded(member)
        if how := checksums.other_test_images(recorded, here):
            raise ConfigError(
                f"config.members.{member.name}.workdir: {member.workdir} was scored on other test images than {than} "
                f"({how}), so it could not be paired with them; name a run on the same data, or leave it unset to "
                f"train in {workdir / member.name}/seed_<seed>."
            )
        if how := checksums.what_differs(recorded, here):
            logging.warning(
                "%s, seed %d: %s was trained on other files than %s (%s); reported as it is.",
                *(member.name, member.seed, member.workdir, than, how),
            )


def _recorded(member: MemberRun) -> dict[str, str] | None:
    """The data checksums a member's finished run recorded."""
    return metrics.load_results(member.workdir).get("dataset_checksums")


def _files_only(source: str, folder: str | None) -> ml_collections.ConfigDict:
    """A data section that reads `source`'s files from `folder` and splits off nothing (`data.load`)."""
    return ml_collections.ConfigDict({"source": source, "dir": folder, "validation_size": 0, "num_train": None})


def _quick_overrides(config: ml_collections.ConfigDict, name: str, given: Collection[str] | None) -> dict[str, Any]:
    """What quick=True sets in member `name` (nested, for `_merge`): its quick_overrides, less the fields
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


def _merge(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets the fields of the nested `overrides` in `config`, recursively; unknown fields are an error."""
    for key, value in overrides.items():
        if key not in config:
            raise ConfigError(f"override {key}={value!r}: the config has no field {key!r}.")
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            _merge(config[key], value)
        else:
            config[key] = value


def run_compare(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, given: Collection[str] | None
) -> dict[str, dict[int, Any]]:
    """Runs every member's seeds that have no finished run yet, then builds the report from all of them;
    returns each member's results by seed."""
    from fmnist_jax import report
    from fmnist_jax.report import sentences, tables

    if config.mode != "train":
        raise ConfigError("a comparison only trains and reports: run evaluate/predict on a member's workdir.")
    runs, lead = member_runs(config, workdir, given), files.is_lead_process()
    with files.stop_together("a member's named folder"):  # before anything trains; process 0 alone may see the folders
        found = [bool(lead and member.named and _check_named(member, workdir)) for member in runs]
    reused = [files.lead_decides(finished) for finished in found]
    to_run = [member for member, finished in zip(runs, reused, strict=True) if not finished]
    if any(member.config.kind == "cnn" for member in to_run):
        from fmnist_jax import timing  # JAX, which a CNN member imports anyway

        timing.start_up()  # the process's start-up is the comparison's: no member's seconds (before_run) hold it
    for member in {m.name: m for m in to_run}.values():  # each member's config once (seeds differ in the seed)
        _check_member(member)
    with files.stop_together("the data the members read"):
        if lead:
            _check_data([m for m, finished in zip(runs, reused, strict=True) if finished], to_run, workdir)
    # Process 0 alone writes config.json; every process checks it, as each member's run. Not undoable after a kill: a
    # member may have taken the new fields by then (they stand where one did).
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
                    run.run(member.config, member.workdir)
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
