"""Copy the raw benchmark outputs of benchmarks/results/*.txt verbatim into benchmarks/README.md
between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` markers (figures are never typed).

    python benchmarks/results/fill_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"


def main():
    text = README.read_text()
    for name in re.findall(r"<!-- begin (\S+) -->", text):
        path = HERE / f"{name}.txt"
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
    README.write_text(text)


if __name__ == "__main__":
    main()
