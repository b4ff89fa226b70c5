"""``python -m benchmarks.robustness [--check]``: regenerate (or check) docs/results.md and the
README's robustness block from docs/results/*.json (see :mod:`benchmarks.robustness.report`)."""

from __future__ import annotations

import argparse
import sys

from benchmarks.robustness import report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the committed markdown differs from the generated one",
    )
    parser.add_argument(
        "--claims",
        action="store_true",
        help="print every claim (effect, CI, p, seeds, verdict, command) as markdown",
    )
    args = parser.parse_args(argv)
    if args.claims:
        print(report.all_claims())
        return 0
    if args.check:
        problems = report.check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `python -m benchmarks.robustness` and commit the result", file=sys.stderr)
            return 1
        print("docs/results.md and the README robustness block match docs/results/*.json")
        return 0
    report.write()
    print(f"wrote {report.RESULTS_MD} and the README robustness block")
    return 0


if __name__ == "__main__":
    sys.exit(main())
