"""The benchmarks: one tool, `python -m benchmarks NAME [flags]` from the repository root (`--help` lists the
names). Each sub-command is a module here with a `main(argv)`; `common` holds what they share."""

# name -> module; `python -m benchmarks --help` shows the first line of each module's docstring.
COMMANDS = {
    "train_speed": "benchmarks.train_speed",
    "time_to_accuracy": "benchmarks.time_to_accuracy",
    "step_times": "benchmarks.step_times",
    "loop_overhead": "benchmarks.loop_overhead",
    "accelerator_check": "benchmarks.accelerator_check",
    "flop_efficiency": "benchmarks.flop_efficiency",
    "profile": "benchmarks.profile_step",
}
