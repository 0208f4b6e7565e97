"""The comparison report: tables and plots from finished workdirs, as Markdown and self-contained HTML.

It reads only what runs left behind (results.json, history.jsonl, predictions.npz, config.json; for a folder that
holds a report, its report.json) and never trains.
`runs` loads and groups the workdirs, `tables` and `sentences` turn them into cells and words, `plots` draws the
figures, `render` writes the blocks as Markdown and HTML, and `build` puts the sections in order.

    python -m fmnist_jax.report runs/cnn runs/rf runs/svm --out runs/report
"""

from fmnist_jax.report.build import build

__all__ = ["build"]
