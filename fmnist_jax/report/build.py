"""`build`: the report of finished workdirs, as a list of sections, each a function from the report's `Context`
to its blocks. Reading `SECTIONS` top to bottom reads the report; adding a section is adding a function."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from fmnist_jax import config_lib, files
from fmnist_jax.errors import UserError
from fmnist_jax.report import plots, sentences, tables
from fmnist_jax.report.render import Block, BulletList, Heading, Image, Paragraph, Table, html_page, markdown
from fmnist_jax.report.runs import Member, Model, changed_from_config_file, folder_label, load_models, released

TITLE = "Fashion-MNIST: model comparison"
REPORT_JSON = "report.json"


@dataclasses.dataclass(frozen=True)
class Context:
    """What every section reads: the models in report order, their paired tests, and the folder for plots."""

    models: list[Model]
    pairs: list[dict[str, Any]]
    plots: pathlib.Path

    @property
    def runs(self) -> list[Member]:
        """Every run of every model, in report order."""
        return [run for m in self.models for run in m.runs]

    @property
    def several(self) -> bool:
        """Whether some model has several seeds (then figures are means ± standard deviations)."""
        return any(len(m.runs) > 1 for m in self.models)


def _test_images(runs: Sequence[Member]) -> str:
    """How many test images the runs were scored on, with "the same" when the counts and data sums agree."""
    counts = {sum(c["support"] for c in r.results["per_class"].values()) for r in runs}
    checksums = {json.dumps(r.results.get("dataset_checksums"), sort_keys=True) for r in runs}
    same = "the same " if len(counts) == 1 and len(checksums) == 1 else ""
    return same + " or ".join(f"{n:,}" for n in sorted(counts))


def introduction(ctx: Context) -> list[Block]:
    """The title and what every figure means."""
    return [
        Heading(level=1, text=TITLE),
        Paragraph(
            f"All models are scored on {_test_images(ctx.runs)} test images by `fmnist_jax.metrics`. "
            "The study's column is the test accuracy the original study published."
            + (" With several seeds, a figure is the mean ± the standard deviation over seeds." if ctx.several else "")
            + _other_data(ctx.runs)
            + _machines(ctx.runs)
        ),
    ]


def _other_data(runs: Sequence[Member]) -> str:
    """A sentence naming the runs that read IDX files other than Fashion-MNIST's released ones, or ""."""
    other = sorted(folder_label(r) for r in runs if released(r.results) is False)
    if not other:
        return ""
    which = "Every run" if len(other) == len(runs) else f"The run{'s' * (len(other) > 1)} {', '.join(other)}"
    return (
        f" {which} read data files other than Fashion-MNIST's released ones (their content's SHA-256 differs): "
        f"{'its' if len(other) == 1 else 'their'} scores are not comparable with the study's."
    )


BASELINE_MODELS = config_lib.BASELINE_MODELS  # results.json's `model` of the baselines (baselines.MODELS)
GROUPS = {"cnn": ("CNN run", "CNN runs"), "baseline": ("baseline", "baselines")}  # the sentence's words, by count


def _hardware(machine: str) -> str:
    """A recorded `machine` without its device count and versions: "cpu: <CPU kind>" or "gpu: <device>"."""
    return machine.split(";")[0]


def _run_machines(results: dict[str, Any]) -> tuple[str, set[str], bool] | None:
    """How a run's machines read in the report ("A", "A`, from step 6 on `B", "A`, scored on `B"), their hardware,
    and whether its training's machine went unrecorded, from results.json's `trained_on` (older CNN results:
    `machine`, the one that scored); `trained_on` null (a baseline scored again whose fit, or a checkpoint scored
    whose training, predates the record): named by the machine that scored it; None where neither says (results
    older than the record)."""
    scored = _hardware(results["machine"]) if results.get("machine") else None
    lineage = results.get("trained_on", [{"machine": results["machine"], "from_step": 0}] if scored else None)
    if not lineage:
        return (scored, {scored}, True) if scored else None
    parts: list[tuple[str, int]] = []  # (hardware, from step), a move between machines of one kind left out
    for p in lineage:
        if not parts or _hardware(p["machine"]) != parts[-1][0]:
            parts.append((_hardware(p["machine"]), p["from_step"]))
    name = parts[0][0] + "".join(f"`, from step {n} on `{m}" for m, n in parts[1:])
    if scored and scored != parts[-1][0]:  # its prediction time is that machine's
        name += f"`, scored on `{scored}"
    return name, {m for m, _ in parts} | ({scored} if scored else set()), False


def _machines(runs: Sequence[Member]) -> str:
    """A sentence naming the hardware the runs computed on (`_run_machines`), since times compare only within one:
    the one all computed on; else, for the CNN runs and for the baselines (which a GPU's host fits on its CPU), the
    one each group computed on or each machine with its runs. The runs without a record are named apart."""
    described: dict[str, dict[str, list[str]]] = {group: {} for group in GROUPS}  # group -> name -> run labels
    hardware: set[str] = set()
    unrecorded = []
    for r in runs:
        found = _run_machines(r.results)
        group = "baseline" if r.results.get("model") in BASELINE_MODELS else "cnn"
        if found is None or found[2]:
            unrecorded.append(
                folder_label(r) + ("" if found is None else "'s fit" if group == "baseline" else "'s training")
            )
        if found is not None:
            described[group].setdefault(found[0], []).append(folder_label(r))
            hardware |= found[1]
    recorded = sum(len(labels) for by_name in described.values() for labels in by_name.values())
    sentence = f" No machine is recorded for {', '.join(unrecorded)}." if unrecorded else ""
    if len(hardware) == 1 and len({name for by_name in described.values() for name in by_name}) == 1:
        other = "other " if recorded < len(runs) else ""
        sentence += f" The {other}run{'s' * (recorded > 1)} computed on `{hardware.pop()}`."
    elif hardware:
        clauses = []
        for group, by_name in described.items():
            words = GROUPS[group][sum(map(len, by_name.values())) > 1]
            if len(by_name) == 1:
                clauses.append(f"the {words} on `{next(iter(by_name))}`")
            elif by_name:
                listed = "; ".join(f"`{name}` ({', '.join(labels)})" for name, labels in by_name.items())
                clauses.append(f"the {words}: {listed}")
        sentence += f" Times compare within one machine only: {', '.join(clauses)}."
    return sentence


def summary(ctx: Context) -> list[Block]:
    """One row per model, then every run's folder and seed (and whether it converged)."""
    return [
        Heading("Summary"),
        Table(header=tables.SUMMARY_HEADER, rows=tables.summary_rows(ctx.models)),
        BulletList(
            [
                f"**{m.title}**: `{run.workdir}`, seed {run.results['seed']}"
                + (" — did **not converge** (max_iter reached)" if run.results.get("converged") is False else "")
                + (
                    f" — not `configs/{run.results['config_name']}.py` as it is: {changed}"
                    if (changed := changed_from_config_file(run))
                    else ""
                )
                for m in ctx.models
                for run in m.runs
            ]
        ),
    ]


def seeds(ctx: Context) -> list[Block]:
    """Every seed's own accuracy and interval, when some model has several."""
    if not ctx.several:
        return []
    return [Heading("Seeds"), Table(header=tables.SEED_HEADER, rows=tables.seed_rows(ctx.models))]


def differences(ctx: Context) -> list[Block]:
    """The paired tests: one sentence per pair, how to read them, and the numbers per pair and seed."""
    if not ctx.pairs:
        return []
    titles = {m.label: m.title for m in ctx.models}
    return [
        Heading("How sure are these differences?"),
        BulletList([pair["sentence"] for pair in ctx.pairs]),
        *([Paragraph(other)] if (other := sentences.trained_on_other_numbers(ctx.models)) else []),
        Paragraph(sentences.PAIRED_TESTS),
        Table(header=tables.PAIR_HEADER, rows=tables.pair_rows(ctx.pairs, titles)),
    ]


def per_class(ctx: Context) -> list[Block]:
    """Precision, recall and F1 per class and model, and the F1 bars when there is more than one model."""
    blocks: list[Block] = [
        Heading("Per class: precision, recall, F1"),
        Paragraph("Best value of each metric per class in bold."),
        Table(header=tables.per_class_header(ctx.models), rows=tables.per_class_rows(ctx.models)),
    ]
    if len(ctx.models) > 1:
        blocks.append(Image(plots.plot_f1(ctx.models, ctx.plots / "f1_per_class.png"), "F1 per class and model"))
    return blocks


def searches(ctx: Context) -> list[Block]:
    """Each searched model's settings, scored on the validation split, as a table and a figure."""
    searched = [m for m in ctx.models if "search" in m.runs[0].results]
    if not searched:
        return []
    blocks: list[Block] = [Heading("Searches")]
    for m in searched:
        blocks += [
            Paragraph(tables.search_paragraph(m)),
            Table(header=tables.SEARCH_HEADER, rows=tables.search_rows(m.runs[0])),
            Image(plots.plot_search(m.runs[0], ctx.plots / f"search_{m.label}.png"), f"{m.title}: search"),
        ]
    return blocks


def confused_classes(ctx: Context) -> list[Block]:
    """Per model (its first seed), the classes it takes for one another most often."""
    blocks: list[Block] = [Heading("Most confused classes")]
    for m in ctx.models:
        blocks += [
            Paragraph(f"**{m.title}**" + (f" (seed {m.seeds[0]})" if len(m.runs) > 1 else "")),
            BulletList(sentences.confused_in_words(tables.confused_pairs(m.runs[0].results["confusion_matrix"]))),
        ]
    return blocks


def confusion_matrices(ctx: Context) -> list[Block]:
    """Each model's confusion matrix (its first seed)."""
    blocks: list[Block] = [Heading("Confusion matrices")]
    for m in ctx.models:
        path = plots.plot_confusion(m.runs[0], ctx.plots / f"confusion_{m.label}.png")
        blocks.append(Image(path, f"{m.title}: confusion matrix" + (f" (seed {m.seeds[0]})" if ctx.several else "")))
    return blocks


def training_curves(ctx: Context) -> list[Block]:
    """Loss and accuracy per epoch of the models that keep a history."""
    curves = [m for m in ctx.models if m.runs[0].history]
    if not curves:
        return []
    return [Heading("Training curves")] + [
        Image(plots.plot_curves(m, ctx.plots / f"curves_{m.label}.png"), f"{m.title}: training curves") for m in curves
    ]


def misclassified(ctx: Context) -> list[Block]:
    """The first misclassified test images of each model that saved them."""
    blocks: list[Block] = [Heading("Misclassified test images")]
    for m in ctx.models:
        path = plots.plot_errors(m.runs[0], ctx.plots / f"errors_{m.label}.png")
        if path:
            blocks.append(Image(path, f"{m.title}: misclassified test images"))
    return blocks


def classes(ctx: Context) -> list[Block]:
    """Sample test images of every class, from the first run that saved them."""
    source = next((r for r in ctx.runs if "sample_images" in r.predictions), None)
    if not source:
        return []
    return [
        Heading("The classes"),
        Image(plots.plot_samples(source, ctx.plots / "samples_per_class.png"), "Test images by class"),
    ]


SECTIONS: tuple[Callable[[Context], list[Block]], ...] = (
    introduction,
    summary,
    seeds,
    differences,
    per_class,
    searches,
    confused_classes,
    confusion_matrices,
    training_curves,
    misclassified,
    classes,
)


def _make_folder(plots: pathlib.Path) -> pathlib.Path:
    """Creates the plots folder, or names it and the fix when it cannot be made."""
    try:
        plots.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the report's folder {plots} ({e.strerror}); choose another --out.") from e
    return plots


def build(workdirs: Sequence[str | pathlib.Path], out: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes out/report.md, out/report.html, out/report.json and out/plots/*.png for the finished runs in
    `workdirs` (runs of one config with distinct seeds are reported as one model)."""
    if not workdirs:
        raise UserError("the report needs at least one finished workdir")
    models = load_models(workdirs)
    out = pathlib.Path(out)
    pairs = tables.compare_pairs(models)  # which refuses runs scored on other test images
    made = files.outermost_missing(out / "plots")  # what a failed build removes: out/plots, out or a parent of it
    plots_folder = _make_folder(out / "plots")
    earlier = _figures_of(out / REPORT_JSON)
    try:
        ctx = Context(models, pairs, plots_folder)
        blocks = [block for section in SECTIONS for block in section(ctx)]
        paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / REPORT_JSON}
        figures = sorted(block.path.name for block in blocks if isinstance(block, Image))
        assert len(set(figures)) == len(figures), f"two figures of one name: {figures}"  # labels are distinct
        record = {
            **tables.report_json(models, ctx.pairs),
            "built_from": str(pathlib.Path.cwd()),
            "out": str(out),
            "figures": figures,
        }
        files.atomic_write_text(paths["json"], json.dumps(record, indent=2) + "\n")
        files.atomic_write_text(paths["markdown"], markdown(blocks, out))
        files.atomic_write_text(paths["html"], html_page(blocks, TITLE))
    except BaseException:
        if made:  # a report that failed half-way leaves no folder it made; an earlier report's stays
            files.remove_made(plots_folder if made == plots_folder else out, made)
        raise
    for stale in sorted(earlier - set(figures)):  # the earlier report's figures of models this one does not hold
        (plots_folder / stale).unlink(missing_ok=True)
    return {**paths, "plots": plots_folder}


# The file names of the figures a report draws, for a report.json written before it listed them (`figures`).
OWN_FIGURES = (
    "f1_per_class.png",
    "samples_per_class.png",
    "search_*.png",
    "confusion_*.png",
    "curves_*.png",
    "errors_*.png",
)


def _figures_of(listing: pathlib.Path) -> set[str]:
    """The figures (file names in plots/) an earlier report's report.json lists; for one written before it listed
    them, the files in plots/ named as a report names its figures; none without a report.json (another file in
    plots/ is never touched)."""
    try:
        record = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(record, dict):
        return set()
    if "figures" not in record:
        return {p.name for pattern in OWN_FIGURES for p in (listing.parent / "plots").glob(pattern)}
    figures = record["figures"] if isinstance(record["figures"], list) else []
    return {name for name in figures if isinstance(name, str) and name == pathlib.Path(name).name}
