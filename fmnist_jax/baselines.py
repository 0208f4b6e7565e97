"""The study's scikit-learn baselines: a random forest and a linear SVM on flattened pixels.

They share only the data loader and the metrics with the CNN (this module never imports JAX), so the three
results.json files compare line for line. The fitted estimator is kept in the workdir (`model.joblib`).
"""

from __future__ import annotations

import io
import itertools
import json
import pathlib
import time
import warnings
from collections.abc import Callable
from typing import Any

import joblib
import ml_collections
import numpy as np
import sklearn
from absl import logging
from sklearn import ensemble, pipeline, preprocessing, svm
from sklearn.exceptions import ConvergenceWarning

from fmnist_jax import checks, checksums, config_lib, data, files, machine, metrics
from fmnist_jax.errors import ConfigError, ResultsError

# model.joblib, and beside it fit.json: what its fit reported, so a run stopped before its scores keeps them.
MODEL_FILE, FIT_FILE = config_lib.MODEL_FILE, config_lib.FIT_FILE
MODELS = config_lib.BASELINE_MODELS  # config.model.name of the baselines (and results.json's `model`)
FIT_FIELDS = ("train_seconds", "converged", "n_iter", "search", "trained_on")
PREPROCESS = ("none", "scale", "standardize")
FOREST_FIELDS = (
    "n_estimators",
    "criterion",
    "max_depth",
    "min_samples_split",
    "min_samples_leaf",
    "max_features",
    "bootstrap",
    "n_jobs",
)
SVM_FIELDS = ("C", "loss", "penalty", "dual", "tol", "max_iter", "fit_intercept", "verbose")
FOREST_PROGRESS_TREES = 10  # trees added per progress line (warm start: the same forest as one fit)


def _check_fields(model_config: ml_collections.ConfigDict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(model_config) - set(allowed) - {"name"})
    if unknown:
        raise ConfigError(
            f"config.model has fields {unknown} that {model_config.name} does not take; its fields are {list(allowed)}."
        )


def _dual(value: str) -> bool | str:
    choices = {"auto": "auto", "true": True, "false": False}
    if str(value).lower() not in choices:
        raise ConfigError(f"config.model.dual={value!r} must be 'auto', 'true' or 'false'.")
    return choices[str(value).lower()]


def _max_features(value: Any) -> Any:
    """config.model.max_features as scikit-learn takes it: the field is a string ("sqrt"), so a number or None given
    on the command line comes as text: "0.5" is a fraction of the features, "100" a count, "None" all of them."""
    if not isinstance(value, str):
        return value
    if value.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def create_estimator(config: ml_collections.ConfigDict) -> Any:
    """The estimator `config.model` describes, behind the preprocessing `config.preprocess` names."""
    m = config.model
    if m.name == "random_forest":
        _check_fields(m, FOREST_FIELDS)
        checks.positive(config, "model.n_estimators", "model.min_samples_split", "model.min_samples_leaf")
        if m.get("max_depth") is not None:
            checks.positive(config, "model.max_depth")
        params = {k: m[k] for k in FOREST_FIELDS if k in m}
        if "max_features" in params:
            params["max_features"] = _max_features(params["max_features"])
        estimator = ensemble.RandomForestClassifier(random_state=config.seed, **params)
    elif m.name == "linear_svm":
        _check_fields(m, SVM_FIELDS)
        checks.positive(config, "model.C", "model.tol", "model.max_iter")
        params = {k: m[k] for k in SVM_FIELDS if k in m}
        params["dual"] = _dual(params.get("dual", "auto"))
        estimator = svm.LinearSVC(random_state=config.seed, **params)
    else:
        raise ConfigError(f"config.model.name={m.name!r} is not a baseline; choose one of {MODELS}.")
    if params.get("n_jobs") == 0:  # joblib's error, at the fit
        raise ConfigError("config.model.n_jobs=0 must be a number of processes, or -1 for every core.")
    try:
        estimator._validate_params()  # scikit-learn's own check of each parameter's type and range, before any fit
    except (ValueError, TypeError) as e:
        field = next((k for k in params if f"'{k}' parameter" in str(e)), None)
        setting = f"model.{field}={params[field]!r}" if field else "model"
        raise ConfigError(f"config.{setting} is rejected by scikit-learn: {e}") from e
    preprocess = config.preprocess
    if preprocess not in PREPROCESS:
        raise ConfigError(f"config.preprocess={preprocess!r} must be one of {PREPROCESS}.")
    steps = {
        "none": [],
        "scale": [("scale", preprocessing.FunctionTransformer(_divide_by_255))],
        "standardize": [("standardize", preprocessing.StandardScaler())],
    }[preprocess]
    return pipeline.Pipeline([*steps, ("model", estimator)])


def _divide_by_255(x: np.ndarray) -> np.ndarray:
    return x / 255.0


def flatten(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 784) float32 raw pixels (0-255); preprocessing happens in the pipeline."""
    return images.reshape(len(images), -1).astype(np.float32)


def count_params(estimator: Any) -> int:
    """Tree nodes for a forest, coefficients plus intercepts for a linear model."""
    model = estimator[-1]
    if hasattr(model, "estimators_"):
        return int(sum(tree.tree_.node_count for tree in model.estimators_))
    return int(model.coef_.size + np.size(model.intercept_))


def fit(estimator: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Fits in place, logging progress; returns {"converged", "n_iter"} (None where they do not apply)."""
    if len(np.unique(y)) < 2:
        raise ConfigError(
            f"the {len(y)} training image(s) hold one class only; a classifier needs at least two: raise "
            "config.data.num_train."
        )
    model = estimator[-1]
    if isinstance(model, ensemble.RandomForestClassifier):
        total = model.n_estimators
        xt = estimator[:-1].fit_transform(x) if len(estimator) > 1 else x
        model.set_params(warm_start=True)
        start = time.perf_counter()
        for n in range(min(FOREST_PROGRESS_TREES, total), total + FOREST_PROGRESS_TREES, FOREST_PROGRESS_TREES):
            model.set_params(n_estimators=min(n, total))
            model.fit(xt, y)
            logging.info("random forest: %d/%d trees, %.1f s", min(n, total), total, time.perf_counter() - start)
        model.set_params(warm_start=False)
        return {"converged": None, "n_iter": None}
    logging.info(
        "fitting %s on %d images (max_iter=%s%s)",
        type(model).__name__,
        len(x),
        model.max_iter,
        "; liblinear reports its iterations on stdout" if getattr(model, "verbose", 0) else "",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    n_iter = int(np.max(model.n_iter_))
    if not converged:
        logging.warning(
            "%s did not converge in max_iter=%d iterations: raise config.model.max_iter or change "
            "config.preprocess; results.json records converged=false.",
            type(model).__name__,
            model.max_iter,
        )
    return {"converged": converged, "n_iter": n_iter}


def predict(estimator: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted classes and, where the model gives them, class probabilities."""
    if hasattr(estimator[-1], "predict_proba"):
        # One column per class the model was trained on (fewer than 10 when the training images lacked some):
        # spread to all 10 classes, a class never seen getting probability 0, so that argmax is the class itself.
        seen = estimator.predict_proba(x)
        probs = np.zeros((len(seen), data.NUM_CLASSES), seen.dtype)
        probs[:, estimator.classes_] = seen
        return probs.argmax(1), probs
    return estimator.predict(x), None


def save_estimator(workdir: pathlib.Path, estimator: Any, record: dict[str, Any]) -> pathlib.Path:
    """The fitted estimator as model.joblib and what its fit reported (`record`, FIT_FIELDS) as fit.json, each written
    atomically and fit.json first: a crash never leaves half a model, nor a model without its record."""
    files.atomic_write_text(workdir / FIT_FILE, json.dumps(record, indent=2) + "\n")
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    path = workdir / MODEL_FILE
    files.atomic_write_bytes(path, buffer.getvalue())
    return path


def _finished_results(workdir: pathlib.Path) -> dict[str, Any] | None:
    """The workdir's results.json; None where there is none, or where it is damaged (said: the model is scored
    again, which rewrites it)."""
    if not (workdir / metrics.RESULTS_FILE).exists():
        return None
    try:
        return metrics.load_results(workdir)
    except ResultsError as e:
        logging.warning("%s Scoring the saved model again instead.", e)
        return None


def fit_record(workdir: pathlib.Path) -> dict[str, Any]:
    """What the fit of WORKDIR/model.joblib reported (FIT_FIELDS): its fit.json, with the data it was fitted on
    (`dataset_checksums`, which fit.json alone records: results.json's are its last scoring's), or for a model saved
    before fit.json existed its results.json's fields; {} where neither can be read (its fit's seconds unknown)."""
    for read, fields in (
        (lambda: json.loads((workdir / FIT_FILE).read_text(encoding="utf-8")), (*FIT_FIELDS, "dataset_checksums")),
        (lambda: metrics.load_results(workdir), FIT_FIELDS),
    ):
        try:
            record = read()
        except (OSError, ValueError, ResultsError):
            continue
        if isinstance(record, dict):
            return {k: v for k, v in record.items() if k in fields}
    return {}


def score_saved(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, estimator: Any, dataset: data.Dataset
) -> dict[str, Any]:
    """`score` of the estimator saved in `workdir`, its fit's seconds and report (`fit_record`) kept in the new
    results.json: a model scored again is never refitted."""
    record = {"trained_on": None, **check_fitted_on(workdir, dataset)}  # None: a fit whose machine was not recorded
    train_seconds = record.pop("train_seconds", None)
    record.pop("dataset_checksums", None)
    return score(config, workdir, estimator, dataset, train_seconds=train_seconds, extra=record)


def check_fitted_on(workdir: pathlib.Path, dataset: data.Dataset) -> dict[str, Any]:
    """The fit's record (`fit_record`), once it shows the model in `workdir` fitted on `dataset`: a ConfigError
    where it was fitted on other data (fit.json's `dataset_checksums`; where none are recorded, nothing to compare)."""
    record = fit_record(workdir)
    if why := checksums.what_differs(record.get("dataset_checksums") or {}, dataset.checksums):
        raise ConfigError(
            f"{workdir / MODEL_FILE} was fitted on other data than is read now ({why}): read the data as its fit did "
            "(config.data.source, config.data.dir), or train in a new --workdir."
        )
    return record


def load_estimator(workdir: str | pathlib.Path) -> Any:
    path = pathlib.Path(workdir) / MODEL_FILE
    if not path.exists():
        raise ConfigError(f"{path} does not exist: train the baseline first (--config.mode=train).")
    try:
        estimator = joblib.load(path)
    except Exception as e:  # damaged or foreign bytes surface as KeyError, UnpicklingError, EOFError, ...
        raise ConfigError(f"{path} cannot be loaded ({type(e).__name__}: {e}); delete it and train again.") from e
    if not isinstance(estimator, pipeline.Pipeline):
        raise ConfigError(f"{path} holds a {type(estimator).__name__}, not a model of this project; train again.")
    return estimator


def run_machine() -> str:
    """What a baseline's fit and scores computed on, as results.json records it (`machine`, and the fit's in
    `trained_on`): the CPU kind (`machine.cpu_kind`: model, instruction set, threads) and scikit-learn's version."""
    return f"cpu: {machine.cpu_kind()}; scikit-learn {sklearn.__version__}"


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first field of a baseline config that cannot run."""
    checks.seed(config)
    estimator, grid = create_estimator(config)[-1], {}
    if config.search.method != "none":
        from fmnist_jax import search  # which imports this module

        grid = search.check_search(config)
    if config.model.name == "linear_svm":
        _check_svm_form(estimator, grid)


# What LinearSVC fits (liblinear's solvers); scikit-learn checks the combination only when a fit starts.
SVM_FORMS = (
    "penalty='l2' with loss='squared_hinge', or with loss='hinge' and dual 'true' or 'auto'; or penalty='l1' with "
    "loss='squared_hinge' and dual 'false' or 'auto'"
)


def _check_svm_form(estimator: Any, grid: dict[str, list[Any]]) -> None:
    """Raises ConfigError where no setting of LinearSVC's penalty, loss and dual that the run would fit (the model's,
    or the search grid's) is one liblinear has a solver for, each tried on three points (a search's other
    unfittable settings are left to it: they show as failed fits)."""
    varied = {k: grid[k] for k in ("penalty", "loss", "dual") if k in grid}
    reason = ""
    for values in itertools.product(*varied.values()):
        setting = dict(zip(varied, values, strict=True))
        probe = sklearn.base.clone(estimator).set_params(max_iter=1, verbose=0, **setting)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                probe.fit(np.eye(3), np.arange(3))
                return
            except ValueError as e:
                if "Unsupported set of arguments" not in str(e):  # not the form's: the run's own fit will say
                    return
                reason = str(e).split(", Parameters:")[0]
    if varied:
        raise ConfigError(
            f"config.search.grid: none of its settings of {sorted(varied)} can be fitted with config.model's other "
            f"fields ({reason}); LinearSVC fits {SVM_FORMS}."
        )
    p = estimator.get_params()
    raise ConfigError(
        f"config.model: LinearSVC cannot fit penalty={p['penalty']!r}, loss={p['loss']!r} and dual="
        f"{str(p['dual']).lower()!r} together ({reason}); it fits {SVM_FORMS}."
    )


def fit_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, accept: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """Fits the baseline (or reuses the one a finished run saved), scores validation and test, writes
    results.json, predictions.npz and model.joblib; returns the results dict. With `config.search.method` set,
    searches `config.search.grid` on the validation split first and fits the best setting. Calls `accept` once
    the data are read (`config_lib.put_back_unless_accepted`)."""
    workdir = pathlib.Path(workdir)
    fitted = (workdir / MODEL_FILE).exists()
    dataset = data.load(config.data, seed=config.seed)
    if fitted:  # on the data it was fitted on, or refused (before `accept`: config.json stays as it was)
        check_fitted_on(workdir, dataset)
    accept()
    if fitted and (finished := _finished_results(workdir)) is not None:
        logging.info("Run already finished: %s, from %s", metrics.scores_line(finished), workdir / metrics.RESULTS_FILE)
        return finished
    if fitted:  # stopped between its fit and its scores, or its results.json damaged
        logging.info("%s holds a fitted model without its scores: scoring it", workdir)
        return score_saved(config, workdir, load_estimator(workdir), dataset)
    x_train, y_train = flatten(dataset.train.images), dataset.train.labels
    extra, estimator = {}, create_estimator(config)
    if config.search.method != "none":
        from fmnist_jax import search  # which imports this module

        best, extra["search"] = search.search(config, dataset)
        estimator.set_params(**{f"model__{k}": v for k, v in best.items()})
    if config.data.use_validation_for_training:
        x_train = np.concatenate([x_train, flatten(dataset.validation.images)])
        y_train = np.concatenate([y_train, dataset.validation.labels])
    logging.info("Data from %s: fitting %s on %d images", dataset.source, config.model.name, len(x_train))
    start = time.perf_counter()
    fit_info = fit(estimator, x_train, y_train)
    train_seconds = time.perf_counter() - start
    extra["trained_on"] = [{"machine": run_machine(), "from_step": 0}]  # the CNN's form: one fit, from its start
    fitted_on = {"dataset_checksums": dict(dataset.checksums)}  # fit.json's: a later scoring reads the same data
    save_estimator(workdir, estimator, {"train_seconds": train_seconds, **fit_info, **extra, **fitted_on})
    return score(config, workdir, estimator, dataset, train_seconds=train_seconds, extra={**fit_info, **extra})


def score(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    estimator: Any,
    dataset: data.Dataset,
    *,
    train_seconds: float | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Validation and test scores of a fitted estimator, written as results.json and predictions.npz."""
    num_fitted = len(dataset.train) + (len(dataset.validation) if config.data.use_validation_for_training else 0)
    val_acc = None  # none when the validation images were trained on: they are not held out then
    if len(dataset.validation) and not config.data.use_validation_for_training:
        val_pred, _ = predict(estimator, flatten(dataset.validation.images))
        val_acc = float(np.mean(val_pred == dataset.validation.labels))
    start = time.perf_counter()
    test_pred, test_probs = predict(estimator, flatten(dataset.test.images))
    predict_seconds = time.perf_counter() - start
    scores = metrics.evaluate(dataset.test.labels, test_pred, test_probs, class_names=dataset.class_names)
    results = metrics.make_results(
        model=config.model.name,
        config_name=config.name,
        scores=scores,
        validation_accuracy=val_acc,
        num_params=count_params(estimator),
        train_seconds=train_seconds,
        predict_seconds=predict_seconds,
        seed=config.seed,
        dataset=dataset,
        extra={**extra, "machine": run_machine(), "num_train_images": num_fitted},
    )
    metrics.save_predictions(  # first: results.json marks the run finished
        workdir, labels=dataset.test.labels, preds=test_pred, probs=test_probs, images=dataset.test.images
    )
    metrics.save_results(workdir, results)
    logging.info(
        "%s: test accuracy %.4f (validation %s), fit %s",
        config.model.name,
        results["test_accuracy"],
        metrics.fmt(val_acc),
        "time unknown" if train_seconds is None else f"{train_seconds:.1f} s",
    )
    return results
