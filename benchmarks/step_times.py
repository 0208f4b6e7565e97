r"""Train-step times of a config and its variants, alternated in one sitting: an ablation's time column, a quick ratio.

    python -m benchmarks step_times --config=speedrun --other=vgg_bn
    python -m benchmarks step_times --config=speedrun --variant="no head:model.head_width=0" \
        --variant="no shifts:augment.translate=0" --variant="batch 128:batch_size=128" --rounds=3

Times `--config` ("base"), each `--variant` (LABEL:FIELD=VALUE[;FIELD=VALUE...], the config with those fields changed)
and `--other` (another CNN config, as it is) in turn, `--rounds` times: each timing is a warm-up call, then the
package's train call for about `--images` training images, from the config's fresh state. Each config's train call is
built, compiled and run once before the first round, and reused by every round; each round starts one config further
along. Alternating spreads a shared machine's drift over all of them, which timing each once, one after the other, would
pin on whichever ran in a slow minute. One JSON line per timing (round, label, ms per step, us per image), then the
medians over the rounds, each relative to the base's per image, and with `--other` the ratio of the whole runs' training
times (each config's steps, its epochs times its steps per epoch, times its step time) per round and its median.
Compilation is left out. `--config.FIELD=VALUE` overrides the base and its variants, `--other.FIELD=VALUE` the other
config.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import ml_collections

from benchmarks import common


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """LABEL:FIELD=VALUE[;FIELD=VALUE...] -> (LABEL, ["--config.FIELD=VALUE", ...])."""
    label, sep, fields = spec.partition(":")
    overrides = [f.strip() for f in fields.split(";") if f.strip()]
    if not sep or not label.strip() or not overrides or any("=" not in f for f in overrides):
        raise common.UsageError(f"--variant={spec!r}: write it as LABEL:FIELD=VALUE[;FIELD=VALUE...]")
    if label.strip() == "base":
        raise common.UsageError("--variant: 'base' names --config itself; choose another label")
    return label.strip(), [f"--config.{f}" for f in overrides]


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("step_times", __doc__)
    parser.add_argument("--config", default="speedrun", help="the base: a CNN config's name in configs/")
    parser.add_argument("--variant", action="append", default=[], help="LABEL:FIELD=VALUE[;FIELD=VALUE...]")
    parser.add_argument("--other", default=None, help="another CNN config, timed as it is")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    parser.add_argument("--images", type=int, default=12_800, help="timed training images per timing")
    args, overrides = common.parse(parser, argv, prefixes=("config", "other"))
    common.check_at_least(parser, args, "rounds", "images")
    with common.usage_errors(parser):
        configs = {"base": common.cnn_config(args.config, overrides["config"])}
        for spec in args.variant:
            label, fields = parse_variant(spec)
            if label in configs or label == args.other:
                raise common.UsageError(f"--variant: the label {label!r} is used twice")
            try:
                configs[label] = common.cnn_config(args.config, [*overrides["config"], *fields])
            except common.UsageError as e:  # its fields were written as --config overrides: name the variant
                raise common.UsageError(f"--variant={spec!r}: {e}") from e
        if overrides["other"] and not args.other:
            raise common.UsageError("--other.FIELD=VALUE overrides need --other=NAME")
        if args.other:
            configs[args.other] = common.cnn_config(args.other, overrides["other"], flag="other", prefix="other")
    arrays = {label: common.load_arrays(config) for label, config in configs.items()}
    seconds: dict[str, list[float]] = {label: [] for label in configs}  # per step
    trainers: dict[str, common.Trainer] = {}  # each built, its train call compiled and run once, before any timing
    for label, config in configs.items():
        trainers[label] = common.warmed(common.trainer(config, arrays[label].train))
    labels = list(configs)
    for round_ in range(args.rounds):
        turn = round_ % len(labels)  # each round starts one further along: no label always times first
        for label in labels[turn:] + labels[:turn]:
            config = configs[label]
            steps = max(1, args.images // config.batch_size)
            step = common.time_training(config, arrays[label].train, steps=steps, run=trainers[label]).step_seconds
            seconds[label].append(step)
            common.emit(
                round=round_,
                variant=label,
                config=args.other if label == args.other else args.config,
                batch_size=config.batch_size,
                ms_per_step=round(1000 * step, 3),
                us_per_image=round(1e6 * step / config.batch_size, 2),
            )
    common.emit(**summary(configs, seconds, arrays, other=args.other))


def summary(
    configs: dict[str, ml_collections.ConfigDict],
    seconds: dict[str, list[float]],
    arrays: dict[str, Any],
    *,
    other: str | None,
) -> dict[str, Any]:
    """The medians per image, relative to the base's, and with `other` the whole runs' training-time ratio."""
    per_image = {label: [s / configs[label].batch_size for s in times] for label, times in seconds.items()}
    median = {label: statistics.median(values) for label, values in per_image.items()}
    row: dict[str, Any] = {
        "median_us_per_image": {label: round(1e6 * value, 2) for label, value in median.items()},
        "relative_to_base": {label: round(value / median["base"], 4) for label, value in median.items()},
    }
    if other:
        base_steps = common.whole_run_steps(configs["base"], len(arrays["base"].train))
        other_steps = common.whole_run_steps(configs[other], len(arrays[other].train))
        ratios = [b * base_steps / (o * other_steps) for b, o in zip(seconds["base"], seconds[other], strict=True)]
        row["training_ratio"] = {
            "per_round": [round(r, 4) for r in ratios],
            "median": round(statistics.median(ratios), 4),
            "is": f"base's {base_steps} steps x its step time / {other}'s {other_steps} steps x its step time, "
            "per round (compilation, evaluation and start-up left out)",
        }
    return row
