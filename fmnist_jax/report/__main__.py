"""The comparison report: tables and plots from finished workdirs, as Markdown and self-contained HTML.

python -m fmnist_jax.report runs/cnn runs/rf runs/svm --out runs/report
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fmnist_jax.errors import UserError
from fmnist_jax.report.build import build


def main(argv: Sequence[str] | None = None) -> int:
    """Builds the report of the workdirs named on the command line; 2 with one line on stderr for a user error."""
    parser = argparse.ArgumentParser(prog="python -m fmnist_jax.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "workdirs", nargs="+", help="finished run folders (each with results.json), or a comparison's folder: its runs"
    )
    parser.add_argument("--out", required=True, help="folder for report.md, report.html and plots/")
    args = parser.parse_args(argv)
    try:
        paths = build(args.workdirs, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {paths['markdown']}, {paths['html']}, {paths['json']} and {paths['plots']}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
