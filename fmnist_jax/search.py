"""The baselines' hyper-parameter searches: every setting of `config.search.grid` trained on the training split and
scored on the validation split only (scikit-learn's grid or successive-halving search over a predefined split), the
best one then fitted by `baselines.fit_and_evaluate`. Never imports JAX."""

from __future__ import annotations

import time
import warnings
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from sklearn.exceptions import ConvergenceWarning

from fmnist_jax import data
from fmnist_jax.baselines import create_estimator, flatten
from fmnist_jax.errors import LOG_FILE_ONLY, ConfigError

SEARCH_METHODS = ("none", "grid", "halving")


def check_search(config: ml_collections.ConfigDict) -> dict[str, list[Any]]:
    """The grid of `config.search`, each value checked before any fit (and before any data is read): our own bounds
    (`create_estimator`) and scikit-learn's parameter validation; raises ConfigError naming the field and the value
    it rejects. Returns the grid in the estimator's values (config.model's strings converted as for one fit)."""
    method, grid = config.search.method, config.search.grid.to_dict()
    if method not in SEARCH_METHODS:
        raise ConfigError(f"config.search.method={method!r} must be one of {SEARCH_METHODS}.")
    factor = config.search.get("factor")
    if method == "halving" and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1):
        raise ConfigError(
            f"config.search.factor={factor!r} must be a number above 1 (each round keeps the best 1/factor of the "
            "settings), e.g. --config.search.factor=3."
        )
    if not grid or not all(isinstance(v, (list, tuple)) and v for v in grid.values()):
        raise ConfigError(f"config.search.grid={grid!r} must map model fields to non-empty lists of values.")
    unknown = [k for k in grid if k not in config.model]
    if unknown:
        raise ConfigError(f"config.search.grid names {unknown}, which are not fields of config.model.")
    if not config.data.validation_size or config.data.use_validation_for_training:
        raise ConfigError(
            "a search scores settings on the validation split: set config.data.validation_size > 0 "
            "and config.data.use_validation_for_training=False."
        )
    checked: dict[str, list[Any]] = {}
    for field, values in grid.items():
        checked[field] = []
        for value in values:
            one = ml_collections.ConfigDict(config.to_dict(), type_safe=False)  # a value of another type too
            one.model[field] = value
            try:
                model = create_estimator(one)[-1]  # our bounds and scikit-learn's parameter validation
            except ConfigError as e:
                reason = str(e).rstrip(".")
                raise ConfigError(
                    f"config.search.grid.{field}: the value {value!r} is rejected ({reason}); change or drop it."
                ) from e
            checked[field].append(model.get_params()[field])  # as the estimator takes it (dual "false": False)
    return checked


def _searcher(config: ml_collections.ConfigDict, grid: dict[str, list[Any]], split: Any) -> Any:
    """scikit-learn's grid or successive-halving search over `grid`, on the predefined train/validation split."""
    from sklearn import model_selection

    estimator = create_estimator(config)
    if "verbose" in estimator[-1].get_params():
        estimator[-1].set_params(verbose=0)
    param_grid = {f"model__{k}": v for k, v in grid.items()}
    common = {"cv": split, "scoring": "accuracy", "refit": False, "verbose": 2, "n_jobs": 1}
    if config.search.method == "grid":
        return model_selection.GridSearchCV(estimator, param_grid, **common)
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (registers the class below)

    return model_selection.HalvingGridSearchCV(
        estimator, param_grid, factor=config.search.factor, random_state=config.seed, **common
    )


def _search_rows(cv: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """Every fitted setting with its validation accuracy (None for a failed fit) and fit seconds."""
    rows = []
    for i, params in enumerate(cv["params"]):
        row = {
            "params": {k.removeprefix("model__"): _plain(v) for k, v in params.items()},
            "validation_accuracy": _finite_or_none(cv["mean_test_score"][i]),  # a failed fit: None (NaN)
            "fit_seconds": float(cv["mean_fit_time"][i]),
        }
        if method == "halving":
            row["round"], row["images"] = int(cv["iter"][i]), int(cv["n_resources"][i])
        rows.append(row)
    return rows


def _best_row(rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The best scored setting among the finalists (halving: those that reached the last round)."""
    if method == "halving":  # a setting's score is the one from the last round it reached (the most images)
        last = {}
        for row in rows:
            key = tuple(row["params"].items())
            if key not in last or row["round"] > last[key]["round"]:
                last[key] = row
        finalists = [r for r in last.values() if r["round"] == max(r["round"] for r in rows)]
    else:
        finalists = rows
    scored = [r for r in finalists if r["validation_accuracy"] is not None]
    if not scored:  # a last round where every setting failed (scikit-learn raises on that itself today)
        raise _all_settings_failed([r["params"] for r in finalists])
    return max(scored, key=lambda r: r["validation_accuracy"])


def search(config: ml_collections.ConfigDict, dataset: data.Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains every setting of `config.search.grid` on the training split and scores it on the validation split
    only (scikit-learn's search over a predefined split; "halving" is successive halving: each round keeps the
    best 1/factor of the settings and trains them on factor times more images). Returns the best setting and
    the record for results.json: every setting with its validation accuracy and fit seconds."""
    from sklearn import model_selection

    grid, method = check_search(config), config.search.method
    x = np.concatenate([flatten(dataset.train.images), flatten(dataset.validation.images)])
    y = np.concatenate([dataset.train.labels, dataset.validation.labels])
    split = model_selection.PredefinedSplit(np.r_[np.full(len(dataset.train), -1), np.zeros(len(dataset.validation))])
    searcher = _searcher(config, grid, split)
    size = int(np.prod([len(v) for v in grid.values()]))
    logging.info(
        "%s search over %d setting%s of %s, scored on %d validation images",
        *(method, size, "" if size == 1 else "s", ", ".join(grid), len(dataset.validation)),
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            searcher.fit(x, y)
        except ValueError as e:  # scikit-learn's "All the N fits failed", with every fit's reason
            if "fits failed" not in str(e):
                raise
            logging.warning("The search's failures: %s", e, extra=LOG_FILE_ONLY)
            raise _all_settings_failed(grid) from e
    seconds = time.perf_counter() - start
    rows = _search_rows(searcher.cv_results_, method)
    best = _best_row(rows, method)
    logging.info(
        "search done in %.1f s: best %s, validation accuracy %.4f", seconds, best["params"], best["validation_accuracy"]
    )
    record = {
        "method": method,
        "grid": rows,
        "best_params": best["params"],
        "best_validation_accuracy": best["validation_accuracy"],
        "seconds": seconds,
    }
    return best["params"], record


def _all_settings_failed(settings: Any) -> ConfigError:
    return ConfigError(
        f"config.search.grid: every setting failed to fit ({settings}); the log file holds scikit-learn's reasons. "
        "Fix the grid's values."
    )


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _plain(value: Any) -> Any:
    """NumPy scalars from a parameter grid as JSON-able Python values."""
    return value.item() if isinstance(value, np.generic) else value
