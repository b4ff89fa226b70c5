"""Copy the raw benchmark outputs of benchmarks/results/*.txt verbatim into benchmarks/README.md
between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` markers (figures are never typed).

    python benchmarks/results/fill_readme.py            # rewrite the blocks
    python benchmarks/results/fill_readme.py --check    # exit 1 when a block differs from its file
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"


def filled(text: str, results_dir: Path = HERE) -> str:
    """``text`` with every ``<!-- begin NAME -->`` block replaced by ``results_dir/NAME.txt``
    (its per-round lines left out); a block without a file is left as it is."""
    for name in re.findall(r"<!-- begin (\S+) -->", text):
        path = results_dir / f"{name}.txt"
        if not path.exists():
            continue
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("  round ")]
        block = "```\n" + "\n".join(lines).strip() + "\n```"
        text = re.sub(
            rf"<!-- begin {name} -->.*?<!-- end {name} -->",
            lambda _, name=name, block=block: (
                f"<!-- begin {name} -->\n{block}\n<!-- end {name} -->"
            ),
            text,
            flags=re.S,
        )
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README differs")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = filled(text)
    if args.check:
        if new != text:
            print(
                f"{README}: a generated block differs from benchmarks/results/*.txt; run "
                "`python benchmarks/results/fill_readme.py` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"{README} matches benchmarks/results/*.txt")
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
