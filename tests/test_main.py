"""main.py: flags, the default workdir, and one-line errors with exit status 2."""

import errno
import io
import json
import re
import shlex
import subprocess
import sys

import pytest
from helpers import ROOT, last_line, load_config, run_main, subprocess_env, tiny_args

import fmnist_jax
from fmnist_jax import config_lib, files, flag_errors, logs, metrics
from fmnist_jax.errors import ConfigError


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config=configs/cnn.py", "--config.num_epoch=1"],
            'error: unknown config field in --config.num_epoch=1: config has no field "num_epoch" (did you mean '
            '"num_epochs"?)',
        ),
        (
            ["--config=configs/compare.py", "--config.members.cnn2.num_epochs=1"],
            'in --config.members.cnn2.num_epochs=1: config.members has no field "cnn2" (did you mean "cnn"?)',
        ),
        (
            ["--config=configs/cnn.py", "--config.model.widths=8,16,32"],  # and the config files that have it
            'in --config.model.widths=8,16,32: config.model has no field "widths" (its fields: conv, name); '
            "configs/speedrun.py, configs/speedrun_gpu.py, configs/vgg_bn.py and 1 more have it",
        ),
        (
            ["--config=configs/compare.py", "--config.members.cnn.foo=1"],
            'config.members.cnn has no field "foo" (see configs/cnn.py for its fields)',
        ),
        (
            ["--config=configs/cnn.py", "--config.num_epochs=1.5"],
            "error: --config.num_epochs=1.5: config.num_epochs takes an integer (the config file's: 30)",
        ),
        (
            ["--config=configs/cnn.py", "--config.augment.flip=yes"],
            "error: --config.augment.flip=yes: config.augment.flip takes True or False (the config file's: False)",
        ),
        (  # a None placeholder's type
            ["--config=configs/cnn.py", "--config.data.num_train=a: b"],
            "error: --config.data.num_train=a: b: config.data.num_train takes an integer (the config file's: None)",
        ),
        (["--confg=configs/cnn.py"], "error: Unknown command line flag 'confg'. Did you mean: config ?"),
        ([], "error: no --config given: name a config file, e.g. --config=configs/cnn.py (in "),
        (
            ["--config=configs/common.py"],
            "(KeyError: 'get_config'); a config file defines get_config() (the configs in ",
        ),
        (
            ["--config=configs/cnn.py", "--config.data.num_train=None"],
            "error: --config.data.num_train=None: config.data.num_train takes an integer, not None, on the command "
            "line; leave the flag out for the config file's None",
        ),
        (["--config=configs/missing.py"], "error: --config=configs/missing.py: no such file (the configs in "),
        (["--config=configs/cnn.py", "extra"], "error: unexpected arguments ['extra']: settings are flags"),
        (  # the last --config is the one absl loads
            ["--config=configs/vgg_bn.py", "--config=configs/cnn.py", "--config.model.widths=8,16"],
            'in --config.model.widths=8,16: config.model has no field "widths" (its fields: conv, name)',
        ),
        (
            ["--config=configs/cnn.py", "--noconfig.tensorboard.enable"],
            'in --noconfig.tensorboard.enable: config.tensorboard has no field "enable" (did you mean "enabled"?)',
        ),
        (  # a run's config.json is not a config file
            ["--config=tests/fingerprints.json"],
            "error: --config=tests/fingerprints.json could not be loaded as a config file (",
        ),
        (
            ["--config=configs/cnn.py", "--config.data.dir=/nonexistent/fmnist"],
            "error: data folder /nonexistent/fmnist (named by config.data.dir) does not exist. Get Fashion-MNIST one "
            "of three ways",
        ),
        (
            ["--config=configs/cnn.py", "--config.data.validation_size=-5"],
            "error: config.data.validation_size=-5 must be zero or more.",
        ),
    ],
)
def test_expected_errors_are_one_line_and_exit_2(tmp_path, args, expected):
    result = run_main(*args, f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in last_line(result.stderr) and last_line(result.stderr).startswith("error: ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()  # a refused command leaves no folder


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_workdir_flag_is_refused_rather_than_taken_for_the_default(tiny_data, tmp_path, given):
    """`--workdir=$DIR` with DIR unset or blank is a mistake, not a request for runs/<config name>: refused in one
    line before anything runs (run in a folder of its own, where runs/ would appear)."""
    args = (f"--config={ROOT / 'configs' / 'random_forest.py'}", f"--workdir={given}", f"--config.data.dir={tiny_data}")
    result = run_main(*args, "--config.data.validation_size=64", "--config.model.n_estimators=1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last_line(result.stderr) == (
        f"error: --workdir names no folder ({given!r}): give the run's folder, or leave the flag out for "
        "runs/random_forest"
    )
    assert not any(tmp_path.iterdir())


def test_words_listed_with_commas_are_a_list_as_numbers_are():
    """`--config.search.grid.max_features=sqrt,log2,0.1` is the list it names, as `--config.seeds=0,1` is
    (ml_collections alone keeps the words whole, one string 'sqrt,log2,0.1', which the search then refuses); a quoted
    literal and one flag per item give the same; a string field keeps its commas (predict.inputs splits its own)."""
    config = load_config("random_forest_search")
    config.search.grid.max_features = ("sqrt,log2, 0.1,",)  # as ml_collections reads the flag (a trailing comma)
    config.search.grid.n_estimators = (5, 10)
    config.predict.inputs = "a.png,b.png"
    flag_errors.split_listed_words(config, ["search.grid.max_features", "search.grid.n_estimators", "predict.inputs"])
    assert config.search.grid.max_features == ("sqrt", "log2", 0.1)
    assert config.search.grid.n_estimators == (5, 10) and config.predict.inputs == "a.png,b.png"
    from benchmarks import common  # the benchmarks read overrides as main.py does

    forms = ["--config.search.grid.max_features=sqrt,log2,0.1", "--config.search.grid.max_features=('sqrt','log2',0.1)"]
    for form in forms:
        assert common.load_config("random_forest_search", [form]).search.grid.max_features == ("sqrt", "log2", 0.1)
    repeated = [f"--config.search.grid.max_features={v}" for v in ("sqrt", "log2", "0.1")]
    assert common.load_config("random_forest_search", repeated).search.grid.max_features == ("sqrt", "log2", 0.1)


def test_the_log_folder_is_made_or_named_in_one_line_before_anything_runs(tmp_path):
    """--log_dir is made when missing, and one that cannot be is an error at once: not at the first warning, which
    would end the run there (the log file is opened lazily)."""
    bad = ("--config=configs/cnn.py", "--config.data.validation_size=-5")  # stops at once, after the logs' set-up
    result = run_main(*bad, f"--workdir={tmp_path / 'w'}", f"--log_dir={tmp_path / 'new' / 'logs'}")
    assert result.returncode == 2 and (tmp_path / "new" / "logs").is_dir()
    (tmp_path / "a_file").write_text("")  # an error raised from a library's (here the OS's): that one in the log
    result = run_main("--config=configs/cnn.py", f"--workdir={tmp_path / 'a_file'}", f"--log_dir={tmp_path / 'new'}")
    (log,) = (tmp_path / "new").glob("*.log")
    assert last_line(result.stderr).endswith(
        f"a_file as a workdir (a file, not a folder); choose a writable --workdir. (details: {log})"
    )
    assert "Traceback" in log.read_text() and "FileExistsError" in log.read_text()
    assert "Traceback" not in result.stderr
    (tmp_path / "file").write_text("")
    result = run_main(*bad, f"--workdir={tmp_path / 'w'}", f"--log_dir={tmp_path / 'file' / 'logs'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith(
        f"error: --log_dir={tmp_path / 'file' / 'logs'}: cannot write a log file there"
    )


@pytest.mark.parametrize(
    "flag, modes, mode",
    [
        ("--config.predict.inputs=shirt.png", "--config.mode=predict alone, and this command trains", "train"),
        ("--config.checkpoint.step=4", "--config.mode=evaluate or predict alone, and this command trains", "train"),
        (
            "--config.predict.inputs=shirt.png",
            "--config.mode=predict alone, and this command runs evaluate",
            "evaluate",
        ),
    ],
)
def test_a_command_with_a_field_only_another_mode_reads_is_refused_before_it_runs(tmp_path, flag, modes, mode):
    """predict.inputs without --config.mode=predict would train the study's CNN for 14 minutes, unasked, or with
    evaluate rescore a run and classify nothing."""
    result = run_main("--config=configs/cnn.py", f"--workdir={tmp_path / 'w'}", f"--config.mode={mode}", flag)
    field = flag.split("=")[0].removeprefix("--config.")
    assert result.returncode == 2 and last_line(result.stderr).startswith(f"error: --config.{field} is read by ")
    assert modes in last_line(result.stderr) and not (tmp_path / "w").exists()


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_bad_progress_interval_is_one_line_before_anything_runs(tmp_path, value):
    # A missing data folder and one epoch: were the value taken, the run would fail at once, not train for minutes.
    flags = (f"--workdir={tmp_path / 'w'}", f"--config.data.dir={tmp_path / 'none'}", "--config.num_epochs=1")
    result = run_main("--config=configs/cnn.py", *flags, env={logs.PROGRESS_ENV: value})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result.stderr) == (
        f"error: FMNIST_PROGRESS_SECONDS={value!r}: give the seconds between progress redraws (e.g. 1), or unset it"
    )
    assert not (tmp_path / "w").exists()


def test_the_progress_interval_is_the_variables_else_by_where_the_bars_go(monkeypatch):
    """Every 30 s into a pipe or a file (a log holds a line per 30 s), every second on a terminal, or as set."""
    monkeypatch.delenv(logs.PROGRESS_ENV, raising=False)
    for tty, seconds in ((False, 30.0), (True, 1.0)):
        monkeypatch.setattr(sys, "stderr", type("Stream", (io.StringIO,), {"isatty": lambda self, t=tty: t})())
        assert logs.progress_seconds() == seconds
        for value, given in (("0.25", 0.25), ("0", 0.0), ("", seconds)):
            monkeypatch.setenv(logs.PROGRESS_ENV, value)
            assert logs.progress_seconds() == given
        monkeypatch.delenv(logs.PROGRESS_ENV)


# main.py's logging set-up, then a warning and N lines on stdout (as main.py's progress bars and prints would).
SET_UP = """import sys
from absl import app, logging
from fmnist_jax import logs


def main(argv):
    logs.set_up()
    logging.warning("once only")
    for i in range(int(argv[1])):
        print("line", i)
    print("done", file=sys.stderr)


app.run(main)
"""


def run_set_up(shell: str, tmp_path) -> subprocess.CompletedProcess:
    """`shell` run by bash, where $SET_UP is the command that runs SET_UP."""
    (tmp_path / "set_up.py").write_text(SET_UP)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'set_up.py'))}"
    shell = shell.replace("$SET_UP", command)
    return subprocess.run(["bash", "-c", shell], check=False, env=subprocess_env(), capture_output=True, text=True)


def test_output_goes_on_when_its_reader_has_gone_or_was_never_there(tmp_path):
    """A run goes on when the reader of its output has gone (a pipe's, a notebook kernel's: it must still save and
    stop on SIGTERM) or when it started without stdout or stderr; absl's handler, which prints a record again where
    its stream is not sys.stderr, prints each once."""
    gone = run_set_up("$SET_UP 100000 2>&1 | head -c 1 >/dev/null; echo ${PIPESTATUS[0]}", tmp_path)
    assert gone.stdout == "0\n" and gone.stderr == ""
    for closed in ("1>&-", "2>&-"):
        result = run_set_up(f"$SET_UP 3 {closed}", tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr
        assert ("done" in result.stderr) == (closed == "1>&-") and ("line 2" in result.stdout) == (closed == "2>&-")
    result = run_set_up("$SET_UP 1 --alsologtostderr", tmp_path)
    assert result.returncode == 0 and result.stderr.count("once only") == 1


def test_a_run_started_without_stdout_and_stderr_trains_to_its_results(tiny_data, tmp_path):
    """`main.py ... >&- 2>&-`: /dev/null takes their place before any file is opened (a file would otherwise get
    their numbers), and the run trains, with its progress bars, to its results."""
    args = " ".join(shlex.quote(a) for a in tiny_args(tiny_data, tmp_path / "w", num_epochs=1))
    shell = f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'main.py'))} {args} >&- 2>&-"
    result = subprocess.run(["bash", "-c", shell], check=False, env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert metrics.load_results(tmp_path / "w")["test_accuracy"] > 0


def test_a_log_file_that_holds_only_what_the_terminal_showed_is_removed(tiny_data, tmp_path):
    """The log file in the temporary folder goes at the end of a run whose warnings the terminal showed whole (here
    that the tiny data are not Fashion-MNIST's), so runs do not fill that folder; one holding a library error's
    traceback stays, as does any under a --log_dir that asked for it."""
    temp = tmp_path / "temp"
    temp.mkdir()
    args = tiny_args(tiny_data, tmp_path / "w", num_epochs=1)
    result = run_main(*args, env={"TMPDIR": str(temp)})
    assert result.returncode == 0 and "differ from Fashion-MNIST's released files" in result.stderr
    assert list(temp.iterdir()) == []
    (tmp_path / "a_file").write_text("")
    result = run_main("--config=configs/cnn.py", f"--workdir={tmp_path / 'a_file'}", env={"TMPDIR": str(temp)})
    assert result.returncode == 2
    (log,) = temp.glob("fmnist_jax.*.log")
    assert "FileExistsError" in log.read_text()
    result = run_main(*args, f"--log_dir={tmp_path / 'asked'}")  # a finished run's rerun: the data still load
    assert result.returncode == 0 and "Run already finished" in result.stderr
    (kept,) = (tmp_path / "asked").glob("*.log")
    assert "differ from Fashion-MNIST's released files" in kept.read_text()


LATE_RECORD = """
import logging, sys
from fmnist_jax import logs
path = logs.set_up(None)
own = logging.LogRecord("absl", logging.WARNING, logs.__file__, 1, "shown whole", None, None)  # as the package's
logging.getLogger().handle(own)
logs.finish()
print(path.exists())
logging.getLogger("asyncio").error("a late library record")  # after the run's end, as asyncio's at exit
print(path.exists() and "a late library record" in path.read_text() and "shown whole" not in path.read_text())
"""


def test_a_record_after_the_log_file_was_removed_makes_it_again(tmp_path):
    """A record after `logs.finish` (asyncio's at the interpreter's exit, hidden from the terminal) makes the log file
    again, holding it alone: nothing the terminal did not show is lost."""
    done = subprocess.run(
        [sys.executable, "-c", LATE_RECORD],
        capture_output=True,
        text=True,
        env=subprocess_env({"TMPDIR": str(tmp_path)}),
        check=False,
    )
    assert done.stdout.split() == ["False", "True"], done.stderr[-2000:]


def test_a_log_file_keeps_a_record_the_terminal_did_not_show_whole_whatever_comes_after_it(tmp_path, monkeypatch):
    """`logs.finish` keeps the log file once any record in it was not shown whole (a library's warning), however
    many of this project's whole lines follow; the terminal never shows asyncio's records (a failed save's tasks at
    exit), which the log file keeps."""
    import logging

    library = logging.LogRecord("orbax", logging.WARNING, "/lib/orbax/manager.py", 1, "a library's warning", None, None)
    own = logging.LogRecord("absl", logging.WARNING, logs.__file__, 1, "shown whole", None, None)
    handler = logs._LogFile(tmp_path / "run.log", delay=True)
    handler.kept = False  # in the temporary folder, as without --log_dir (`logs.set_up`)
    for record in (library, own):
        handler.handle(record)
    monkeypatch.setattr(logs, "_FILES", [handler])
    logs.finish()
    handler.close()
    assert "a library's warning" in (tmp_path / "run.log").read_text()
    late = logging.LogRecord("asyncio", logging.ERROR, "/lib/asyncio/base_events.py", 1, "Task exception", None, None)
    assert not logs._Terminal().filter(late) and logs._OwnLogsOnly().filter(late)
    assert logs._Terminal().filter(library) and logs._Terminal().filter(own)


def test_flag_errors_name_a_folder_given_as_the_config_and_list_the_config_files():
    configs = ROOT / "configs"
    names = sorted(p.name for p in configs.glob("*.py") if p.name not in ("__init__.py", "common.py"))  # not those
    listed = ", ".join(names)
    assert listed.startswith("cnn.py, compare.py, linear_svm.py") and len(names) >= 10
    error = ValueError("the parser's own")
    assert flag_errors.flag_error([f"--config={configs / 'nope.py'}"], error, configs) == (
        f"--config={configs / 'nope.py'}: no such file (the configs in {configs}: {listed})"
    )
    assert flag_errors.flag_error([f"--config={configs}"], error, configs) == (
        f"--config={configs}: a folder, not a config file (the configs in {configs}: {listed})"
    )


# A process that takes itself for native Windows (`sys.platform` set before anything imports the package), then
# runs CODE.
ON_WINDOWS = "import sys; sys.platform = 'win32'; {code}"


def test_native_windows_is_refused_in_one_line_that_names_wsl():
    """main.py on native Windows: one line, exit 2, before it reads a flag (the workdir's lock takes fcntl and a run
    stops on POSIX signals); the package itself refuses to import there with the same words. Linux and macOS are not
    refused."""
    why = fmnist_jax.unsupported_platform("win32")
    assert "native Windows" in why and "WSL 2" in why
    assert fmnist_jax.unsupported_platform("linux") is None and fmnist_jax.unsupported_platform("darwin") is None
    main = "import runpy; sys.argv = ['main.py', '--config=nope.py']; runpy.run_path('main.py', run_name='__main__')"
    for code, line in [(main, f"error: {why}"), ("import fmnist_jax", f"ImportError: {why}")]:
        result = run_main(script=("-c", ON_WINDOWS.format(code=code)), timeout=60)
        assert result.returncode == (2 if code == main else 1), result.stderr[-2000:]
        assert last_line(result.stderr) == line
        assert ("Traceback" in result.stderr) == (code != main)  # main.py: the line alone


def test_none_in_any_case_is_named_as_the_none_the_command_line_cannot_give():
    argv, text = ["--config.data.num_train=none"], "flag --config.data.num_train=none: could not parse"
    assert flag_errors.wrong_type(load_config("cnn"), argv, text) == (
        "--config.data.num_train=none: config.data.num_train takes an integer, not None, on the command line; leave "
        "the flag out for the config file's None"
    )


def test_evaluate_or_predict_where_nothing_trained_is_one_line_and_makes_nothing(tmp_path):
    """A mistyped workdir is not made (with a lock, and a checkpoint folder whose form a later run would keep)."""
    typo = tmp_path / "runs" / "cnnn"
    result = run_main("--config=configs/cnn.py", f"--workdir={typo}", "--config.mode=evaluate")
    assert result.returncode == 2 and last_line(result.stderr) == (
        f"error: --workdir={typo} does not exist: evaluate reads a trained run's folder; check the path, or train "
        "first."
    )
    assert not typo.exists()
    (tmp_path / "empty").mkdir()
    result = run_main("--config=configs/cnn.py", f"--workdir={tmp_path / 'empty'}", "--config.mode=predict")
    assert result.returncode == 2 and last_line(result.stderr) == (
        f"error: --workdir={tmp_path / 'empty'} holds no run (no config.json, checkpoints or model.joblib): predict "
        "reads a trained run's folder; check the path, or train first."
    )
    assert not any((tmp_path / "empty").iterdir())  # no lock, no checkpoints/
    from benchmarks import common

    config_lib.save_or_check(common.load_config("cnn"), tmp_path / "empty")  # a start stopped before its checkpoints
    result = run_main("--config=configs/cnn.py", f"--workdir={tmp_path / 'empty'}", "--config.mode=evaluate")
    assert result.returncode == 2 and last_line(result.stderr).startswith(
        f"error: no checkpoint in {tmp_path / 'empty' / config_lib.CHECKPOINTS_DIR}: train first"
    )


def test_without_jax_the_lead_process_is_told_by_the_launchers_rank(monkeypatch):
    monkeypatch.delitem(sys.modules, "jax")  # a run that never imports JAX (baselines, comparisons)
    for variable in files.RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert files.is_lead_process()
    monkeypatch.setenv("JAX_PROCESS_ID", "")  # empty: unset
    assert files.is_lead_process()
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert not files.is_lead_process()
    monkeypatch.delenv("SLURM_PROCID")
    monkeypatch.setenv("TPU_WORKER_ID", "1")  # a TPU pod's second host
    assert not files.is_lead_process()


def test_a_log_file_that_cannot_be_written_is_said_once_then_left(tmp_path, capsys):
    """A full disk under --log_dir: one warning on the terminal, not Python's twenty-line report per record."""
    import logging

    from fmnist_jax import logs

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "folder").mkdir()  # a folder where the file should be: it cannot be opened
    for handler in (logs._LogFile(tmp_path / "folder", delay=True), logs._LogFile(tmp_path / "log", delay=True)):
        if handler.baseFilename.endswith("log"):
            handler.stream = FullDisk()  # opened, then every write fails
        logger = logging.getLogger("test_a_log_file_that_cannot_be_written")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            for _ in range(3):
                logger.warning("a library's warning")
        finally:
            logger.removeHandler(handler)
        err = capsys.readouterr().err
        assert err.count("cannot be written") == 1 and "no more is logged there" in err and "Logging error" not in err
    handler = logs._LogFile(tmp_path / "kept.log", delay=True)  # a record that cannot be formatted: it alone is lost
    logger.addHandler(handler)
    try:
        logger.warning("a library's %d", "typo")
        logger.warning("the next warning")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert "a log record could not be written" in capsys.readouterr().err
    assert "the next warning" in (tmp_path / "kept.log").read_text()


def test_an_error_in_a_log_line_is_brief_on_the_terminal_and_whole_in_the_log_file(tmp_path):
    """A library's error can run to pages (TensorStore's spec of a damaged array): a warning of this project that
    carries one shows it cut at a word, on one line that names the log file; the log file keeps it whole."""
    import logging

    from fmnist_jax import logs
    from fmnist_jax.errors import SEE_LOG_FILE, brief, traceback_text

    spec = "Encountered error while reading array index: {'driver': 'zarr', 'dtype': 'float32'}" + " x" * 200
    error = ValueError(spec + "\n  with a second line")
    assert brief(error) == "ValueError: " + spec[: spec[:200].rindex(" ")] + " ..."
    assert brief(KeyError("step")) == "KeyError: 'step'" and brief(OSError()) == "OSError"
    tensorstore = (
        "Encountered error while reading array index: (slice(0, 256, 1),). See full TensorStore details: <bound"
    )
    assert brief(Exception(tensorstore + " method Spec...>")) == (  # its pointer to its own objects left out
        "Exception: Encountered error while reading array index: (slice(0, 256, 1),)."
    )
    try:
        raise error
    except ValueError:
        exc_info = sys.exc_info()
    own = str(ROOT / "fmnist_jax" / "checkpoints.py")
    record = logging.LogRecord(
        "absl", logging.WARNING, own, 1, "Checkpoint 8 does not restore (%s).", (brief(error),), exc_info
    )
    line = logs._OneLinePerLibraryRecord(tmp_path / "run.log").format(record)
    assert line.endswith(f"Checkpoint 8 does not restore ({brief(error)}). (details: {tmp_path / 'run.log'})")
    assert "\n" not in line and "Traceback" not in line and record.exc_info is exc_info  # the record kept for the file
    assert "Traceback" in logging.Formatter().format(record) and "with a second line" in logging.Formatter().format(
        record
    )
    flagged = logging.LogRecord(
        "absl", logging.WARNING, own, 1, "Checkpoint 8 does not restore (%s).", (brief(error),), None
    )
    flagged.__dict__.update(SEE_LOG_FILE)  # its details in a record of the log file's own: no frames kept
    assert logs._OneLinePerLibraryRecord(tmp_path / "run.log").format(flagged).endswith(line[line.index("] ") :])
    assert traceback_text(error).startswith("Traceback") and traceback_text(error).endswith("with a second line")
    record = logging.LogRecord("absl", logging.INFO, own, 1, "Resumed from checkpoint at step %d", (6,), None)
    assert (
        logs._OneLinePerLibraryRecord(tmp_path / "run.log").format(record).endswith("Resumed from checkpoint at step 6")
    )


def test_own_log_lines_are_told_by_where_their_file_lies(tmp_path):
    from fmnist_jax import logs

    assert logs._own_file(str(ROOT / "fmnist_jax" / "training" / "loop.py")) and logs._own_file(str(ROOT / "main.py"))
    library = tmp_path / "fmnist_jax" / ".venv" / "lib" / "orbax" / "checkpoint_manager.py"  # a checkout so named
    assert not logs._own_file(str(library)) and not logs._own_file(str(tmp_path / "fmnist_jax" / "main.py"))


@pytest.fixture(scope="module")
def default_workdir_run(tiny_data, tmp_path_factory):
    """A one-epoch tiny CNN run by main.py without --workdir, from its own folder: (that folder, main.py's result)."""
    cwd = tmp_path_factory.mktemp("main")
    result = run_main(
        f"--config={ROOT / 'configs' / 'cnn.py'}",
        "--config.num_epochs=1",
        f"--config.data.dir={tiny_data}",
        "--config.data.validation_size=64",
        "--config.steps_per_call=2",
        "--config.eval_batch_size=50",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return cwd, result


def test_default_workdir_is_runs_slash_config_name(default_workdir_run):
    cwd, result = default_workdir_run
    workdir = cwd / "runs" / "cnn"
    assert metrics.load_results(workdir)["num_params"] == 438_026
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_epochs"] == 1 and saved["data"]["validation_size"] == 64
    assert "epoch 1/1" in result.stderr and "test accuracy" in result.stderr
    assert "Renaming" not in result.stderr  # Orbax's INFO chatter is filtered out


def test_evaluate_takes_the_trained_data_fields_not_on_its_command_line_and_refuses_others(
    default_workdir_run, tiny_data
):
    """`mode=evaluate` without the training's data flags scores the split the run held out (its config.json's
    validation_size, not the config file's 12,000), says so, and gives the run's own scores; a data flag given with
    another value is refused in one line naming the flag to drop, and nothing is written."""
    cwd, _ = default_workdir_run
    workdir = cwd / "runs" / "cnn"
    trained = metrics.load_results(workdir)
    asked = ("--config=configs/cnn.py", f"--workdir={workdir}", f"--config.data.dir={tiny_data}")
    result = run_main(*asked, "--config.mode=evaluate", "--config.eval_batch_size=50")
    assert result.returncode == 0, result.stderr[-2000:]
    taken = "data.validation_size=64, num_epochs=1."  # the held-out split, and the run's own end
    assert f"evaluate: as {workdir} was trained (its config.json): {taken}" in result.stderr
    scored = metrics.load_results(workdir)
    assert scored["params_sha256"] == trained["params_sha256"]
    assert scored["validation_accuracy"] == pytest.approx(trained["validation_accuracy"], abs=1e-6)
    assert scored["test_accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-6)
    before = sorted(p.name for p in workdir.iterdir())
    refused = run_main(*asked, "--config.mode=evaluate", "--config.seed=1", "--config.data.validation_size=32")
    assert refused.returncode == 2
    assert last_line(refused.stderr).startswith(
        f"error: {workdir} was trained with another model or data (data.validation_size: trained with 64, asked for "
        "32, seed: trained with 0, asked for 1); drop --config.data.validation_size --config.seed to use what it "
        "was trained with"
    )
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_compilation_cache_off_on_cpu_by_default_and_a_folder_reused_to_the_same_bits(tiny_data, tmp_path):
    """`config.compilation_cache`: "auto" on a CPU (JAX given no folder) writes no cache; a folder named fills it,
    and a second run with the same folder compiles nothing new (every program found) and ends with the same bits.
    "off", and which folder each setting picks on each platform: test_compile_cache.py, in-process."""
    no_jax_folder = {"JAX_COMPILATION_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    fields = ("--config=configs/cnn.py", f"--config.data.dir={tiny_data}", "--config.num_epochs=1")
    fields += ("--config.data.validation_size=64", "--config.data.num_train=128")

    def train(name, *extra, env):
        result = run_main(*fields, f"--workdir={tmp_path / name}", *extra, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return metrics.load_results(tmp_path / name)["params_sha256"]

    folder = tmp_path / "cache"
    reference = train("first", f"--config.compilation_cache={folder}", env=no_jax_folder)
    entries = sorted(p.name for p in folder.iterdir())
    assert len(entries) >= 5  # the set-up, the train call, the evaluation, the copies
    assert train("second", f"--config.compilation_cache={folder}", env=no_jax_folder) == reference
    assert sorted(p.name for p in folder.iterdir()) == entries
    assert train("auto", env=no_jax_folder) == reference and not (tmp_path / "xdg").exists()


def test_a_model_config_on_a_comparisons_workdir_points_at_a_members_run(tmp_path):
    """Not at the comparison's config file, which only trains and reports: at a member's run of the command's model
    that is there (seed 3 of the CNN, beside a forest's), or, with none, at the form of its members' folders."""
    from benchmarks import common

    config_lib.save_or_check(common.load_config("compare", []), tmp_path)
    for mode in ("evaluate", "predict"):
        config = common.load_config("cnn", [f"--config.mode={mode}"])
        how = rf"holds a compare run, not a cnn \(seed_cnn\) one; {mode} reads one of its members' runs, "
        with pytest.raises(ConfigError, match=how + re.escape(f"none here is a cnn (seed_cnn) run ({tmp_path}/MEMBER")):
            config_lib.trained_fields(config, tmp_path, evaluate=mode == "evaluate")
    config_lib.save_or_check(common.load_config("random_forest", []), tmp_path / "random_forest" / "seed_3")
    config_lib.save_or_check(common.load_config("cnn", []), tmp_path / "cnn" / "seed_3")
    with pytest.raises(ConfigError, match=re.escape(f"e.g. --workdir={tmp_path / 'cnn' / 'seed_3'}.")):
        config_lib.trained_fields(config, tmp_path, evaluate=False)
    # A member's run named elsewhere (--config.members.cnn.workdir, "reuse a run") is found there.
    named = ["--config.seeds=5", f"--config.members.cnn.workdir={tmp_path.parent / 'mine_{seed}'}"]
    config_lib.save_or_check(common.load_config("compare", named), tmp_path / "other")
    config_lib.save_or_check(common.load_config("cnn", []), tmp_path.parent / "mine_5")
    with pytest.raises(ConfigError, match=re.escape(f"e.g. --workdir={tmp_path.parent / 'mine_5'}.")):
        config_lib.trained_fields(config, tmp_path / "other", evaluate=False)


def test_evaluate_with_another_config_names_the_flags_that_restore_the_trained_one(tmp_path):
    """Where every field counts as asked (`given=None`: a config built in Python), the refusal to evaluate a workdir
    with another model or data says which --config.FIELD=VALUE flags to add and which to drop (a field the run left
    unset) for the config it was trained with; so changed, the command passes the check (tuples, floats and None as
    the flags take them)."""
    from benchmarks import common

    trained = common.load_config("vgg_bn", ["--config.model.widths=16,32,64", "--config.data.validation_size=500"])
    config_lib.save_or_check(trained, tmp_path)
    asked_flags = ["--config.mode=evaluate", "--config.model.dropout=0.25", "--config.data.num_train=6000"]
    with pytest.raises(ConfigError) as refused:
        config_lib.trained_fields(common.load_config("vgg_bn", asked_flags), tmp_path, evaluate=True)
    how = re.search(r"; add (.*) and drop (.*) to use what it was trained with", str(refused.value))
    add, drop = shlex.split(how.group(1)), how.group(2).split()
    assert sorted(add) == [
        "--config.data.validation_size=500",
        f"--config.model.dropout={trained.model.dropout}",
        "--config.model.widths=16,32,64",
    ]
    assert drop == ["--config.data.num_train"]
    fixed = [f for f in asked_flags if f.split("=")[0] not in drop] + add
    assert config_lib.trained_fields(common.load_config("vgg_bn", fixed), tmp_path, evaluate=True) == {}


def test_evaluate_and_predict_take_the_trained_fields_the_command_line_left_alone(tmp_path):
    """With `given` (the fields or sections main.py's command line set), every field that changes what is computed
    and differs from the trained run's is taken from its config.json (tta_flip and weight_decay too: the run's own
    scores, and an optimizer state that restores); one the command line set is used as asked, but a model, seed or
    data field so set is refused, naming the flags (or the section's flag) to drop. Nothing changes the config
    until `take`; a config.json value this version's field cannot hold, or a run of another model, is refused."""
    from benchmarks import common

    widths = ["--config.model.widths=16,32,64", "--config.data.validation_size=500", "--config.weight_decay=0.01"]
    trained = common.load_config("vgg_bn", [*widths, "--config.seed=3", "--config.tta_flip=False"])
    config_lib.save_or_check(trained, tmp_path)
    config = common.load_config("vgg_bn", ["--config.mode=evaluate"])
    taken = config_lib.trained_fields(config, tmp_path, evaluate=True, given={"mode"})
    expected = {"data.validation_size": 500, "model.widths": [16, 32, 64], "seed": 3, "tta_flip": False}
    assert taken == {**expected, "weight_decay": 0.01}
    assert config.model.widths == common.load_config("vgg_bn").model.widths  # `take` changes it
    config_lib.take(config, taken, tmp_path)
    assert (config.model.widths, config.data.validation_size, config.seed) == ((16, 32, 64), 500, 3)
    assert config_lib.diff(config_lib.read_saved(tmp_path / "config.json"), config_lib.to_dict(config)) == {}
    config = common.load_config("vgg_bn", ["--config.mode=predict", "--config.tta_flip=True", "--config.seed=5"])
    taken = config_lib.trained_fields(config, tmp_path, evaluate=False, given={"mode", "tta_flip", "seed"})
    assert taken == {"data.validation_size": 500, "model.widths": [16, 32, 64], "weight_decay": 0.01}
    for asked, given, flags in [
        (["--config.model.dropout=0.25"], {"model.dropout"}, "--config.model.dropout"),
        (
            ["--config.data={'source': 'auto', 'dir': None, 'validation_size': 50, 'num_train': None}"],
            {"data"},
            "--config.data",
        ),
    ]:
        config = common.load_config("vgg_bn", ["--config.mode=evaluate", *asked])
        with pytest.raises(ConfigError, match=rf"asked for [\d.]+\); drop {re.escape(flags)} to use what it was"):
            config_lib.trained_fields(config, tmp_path, evaluate=True, given={"mode", *given})
    saved = config_lib.read_saved(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({**saved, "seed": "three"}))  # another version's field
    config = common.load_config("vgg_bn", ["--config.mode=evaluate"])
    with pytest.raises(ConfigError, match=r"seed: trained with 'three', asked for 0\); its config.json is another"):
        config_lib.trained_fields(config, tmp_path, evaluate=True, given={"mode"})
    assert config.seed == 0 and config.model.widths == common.load_config("vgg_bn").model.widths
    with pytest.raises(
        ConfigError, match=r"\(seed_cnn\) one; use the config file it was trained with \(configs/vgg_bn\.py\)\.$"
    ):
        config_lib.trained_fields(common.load_config("cnn"), tmp_path, evaluate=True, given=set())
    named = common.load_config("vgg_bn", ["--config.model.name=seed_cnn"])  # the model named on the command line
    with pytest.raises(ConfigError, match=r"not a cnn \(seed_cnn\) one; drop --config.model.name\.$"):
        config_lib.trained_fields(named, tmp_path, evaluate=True, given={"model.name"})
    named = common.load_config("speedrun", ["--config.model.name=seed_cnn"])  # another file, and the flag
    with pytest.raises(ConfigError, match=r"with \(configs/vgg_bn\.py\), without --config.model.name\.$"):
        config_lib.trained_fields(named, tmp_path, evaluate=True, given={"model.name"})
    saved = config_lib.read_saved(tmp_path / "config.json")  # as trained by cnn.py with --config.model.name=vgg_bn
    (tmp_path / "config.json").write_text(json.dumps({**saved, "name": "cnn"}))
    with pytest.raises(ConfigError, match=r"not a cnn \(seed_cnn\) one; add --config.model.name=vgg_bn\.$"):
        config_lib.trained_fields(common.load_config("cnn"), tmp_path, evaluate=True, given=set())


def test_the_flags_that_restore_a_saved_config_and_none_for_a_field_it_lacks():
    saved = {"num_epochs": 1, "data": {"num_train": None}}
    changed = config_lib.diff(saved, {"num_epochs": 30, "data": {"num_train": 6000}})
    requested = {"num_epochs": 30, "data": {"num_train": 6000}}
    flags = config_lib.restoring_flags(changed, saved, requested)
    assert flags == "add --config.num_epochs=1 and drop --config.data.num_train"
    earlier, now = {"num_epochs": 1}, {"num_epochs": 1, "adam": {"b1": 0.9}}  # a field one version lacks: no flag
    assert config_lib.restoring_flags(config_lib.diff(earlier, now), earlier, now) == ""
    assert config_lib.restoring_flags(config_lib.diff(now, earlier), now, earlier) == ""  # not --config.adam.b1


def test_a_suggested_flag_parses_back_to_its_value():
    """`config_lib.override` writes each kind of value so that ml_collections reads it back as it was."""
    from benchmarks import common

    config = common.load_config("vgg_bn")
    cases = {"model.widths": (8, 16), "augment.flip": False, "name": "a b", "learning_rate": 0.5, "model.depths": ()}
    assert all(config_lib.get(config, field) != value for field, value in cases.items())  # each one a change
    flags = [shlex.split(config_lib.override(field, value))[0] for field, value in cases.items()]
    parsed = common.load_config("vgg_bn", flags)
    assert {field: config_lib.get(parsed, field) for field in cases} == cases


def test_a_workdir_of_another_kind_of_run_is_refused_in_one_short_line(tmp_path):
    """A baseline started in a CNN's workdir: one short line saying what the workdir holds and the main fields that
    differ, not all thirty."""
    from benchmarks import common

    config_lib.save_or_check(common.load_config("cnn"), tmp_path)
    metrics.append_history(tmp_path, {"epoch": 1, "step": 750})  # an epoch trained and saved: config.json stays
    (tmp_path / config_lib.CHECKPOINTS_DIR / "750").mkdir(parents=True)
    with pytest.raises(ConfigError) as refused:
        config_lib.save_or_check(common.load_config("random_forest"), tmp_path)
    assert str(refused.value).startswith(
        f"{tmp_path} holds a cnn (seed_cnn) run, not a baseline (random_forest) one (fields that differ: kind,"
        " model.name, name, "
    )
    assert re.search(r" and \d+ more\); use a new --workdir\.$", str(refused.value))


def test_a_damaged_config_json_is_named_with_the_fix_for_a_rerun_and_for_evaluate(tmp_path):
    from benchmarks import common

    config, path = common.load_config("cnn"), tmp_path / config_lib.CONFIG_FILE
    for text, says in (
        ('{"kind": "cnn", ', r"cannot be read as a config \(Expecting"),
        ("[1, 2]", "holds list, not a config"),
        ("{}", "lacks the field 'kind': it is not a run's config"),
    ):
        path.write_text(text)
        for check in (
            lambda: config_lib.save_or_check(config, tmp_path),
            lambda: config_lib.trained_fields(config, tmp_path, evaluate=True),
        ):
            with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} {says}.*; fix or delete it\.$"):
                check()
        assert path.read_text() == text  # left for the user to mend


def test_a_baseline_stopped_between_its_fit_record_and_its_model_lets_the_next_start_change_any_field(tmp_path):
    """fit.json is written before model.joblib: alone it is nothing a rerun goes on from (the rerun fits again)."""
    from benchmarks import common

    config = common.load_config("random_forest")
    config_lib.save_or_check(config, tmp_path)
    (tmp_path / config_lib.FIT_FILE).write_text("{}")
    (tmp_path / f"{files.TEMP_PREFIX}x{files.TEMP_SUFFIX}").write_text("")  # a write a kill cut short: nothing kept
    config.model.n_estimators = 10
    config_lib.save_or_check(config, tmp_path)  # replaced
    assert config_lib.read_saved(tmp_path / config_lib.CONFIG_FILE)["model"]["n_estimators"] == 10
    (tmp_path / config_lib.MODEL_FILE).write_bytes(b"")  # now a fitted model lies there: kept
    config.model.n_estimators = 20
    with pytest.raises(ConfigError, match=r"model.n_estimators: 10 -> 20"):
        config_lib.save_or_check(config, tmp_path)


def test_a_config_file_that_fails_names_its_line(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text("import ml_collections\n\n\ndef get_config():\n    return ml_collections.ConfigDict({'a': b})\n")
    result = run_main(f"--config={config}", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result.stderr) == (
        f"error: --config={config} could not be loaded as a config file (NameError at {config}:5: name 'b' is not "
        "defined)"
    )


@pytest.mark.parametrize("returned, said", [("{'kind': 'cnn'}", "dict"), ("None", "None")])
def test_a_config_file_that_returns_no_config_dict_says_so(tmp_path, returned, said):
    """A plain dict has `.get` too (it once reached the run and failed there with a traceback); None tripped absl's
    "--config must have a value" instead of naming the file's return value."""
    config = tmp_path / "mine.py"
    config.write_text(f"def get_config():\n    return {returned}\n")
    result = run_main(f"--config={config}", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr and not (tmp_path / "w").exists()
    assert last_line(result.stderr) == (
        f"error: --config={config}: its get_config() returned {said}, not an ml_collections.ConfigDict; return one "
        "(as the configs in configs/ do)"
    )


def test_what_is_wrong_with_a_path_is_named_as_it_is(tiny_data, tmp_path):
    """A path that is there but of the wrong sort is not called missing: a workdir that is a file or a dangling
    symbolic link, an IDX file that is a folder, a --config that is a folder; --config.FIELD without --config says
    --config is missing; a comparison's folder given to evaluate points at one of its members' runs."""
    (tmp_path / "file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (data / name).write_bytes((tiny_data / name).read_bytes())
    (data / "train-labels-idx1-ubyte.gz").mkdir()
    from benchmarks import common

    config_lib.save_or_check(common.load_config("compare"), tmp_path / "compare")
    evaluate = ("--config=configs/cnn.py", "--config.mode=evaluate")
    for args, said in [
        ((*evaluate, f"--workdir={tmp_path / 'file'}"), f"--workdir={tmp_path / 'file'} is a file, not a run's folder"),
        (
            ("--config=configs/random_forest.py", f"--workdir={tmp_path / 'dangling'}"),
            f"cannot use {tmp_path / 'dangling'} as a workdir (a symbolic link to {tmp_path / 'gone'}, which does not",
        ),
        (
            ("--config=configs/random_forest.py", f"--workdir={tmp_path / 'w'}", f"--config.data.dir={data}"),
            f"{data / 'train-labels-idx1-ubyte.gz'}: a folder where the IDX file should be.",
        ),
        (("--config=configs", f"--workdir={tmp_path / 'w'}"), "--config=configs: a folder, not a config file"),
        (("--config.num_epochs=1",), "no --config given: name a config file, e.g. --config=configs/cnn.py"),
        (
            (*evaluate, f"--workdir={tmp_path / 'compare'}"),
            f"evaluate reads one of its members' runs, none here is a cnn (seed_cnn) run ({tmp_path / 'compare'}/",
        ),
    ]:
        result = run_main(*args)
        assert result.returncode == 2 and said in last_line(result.stderr), (args, result.stderr[-1000:])
    assert not (tmp_path / "w").exists() and not (tmp_path / "gone").exists()
