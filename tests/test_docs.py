"""Every ``ALGORITHMS.md §x.y`` citation in the code names a section of docs/ALGORITHMS.md, and
the user docs never send readers outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CODE_DIRS = ("lightning_robust", "callbacks", "evals", "configs", "benchmarks", "tests")
CITATION = re.compile(r"ALGORITHMS(?:\.md)?\s*§\s*(\d+(?:\.\d+b?)*)")


def section_numbers(text: str) -> set[str]:
    """``{"0", "1", "1.1", ..., "8.5b"}`` from the headings ``## 1. ...`` / ``### 1.1 ...``."""
    found = set()
    for line in text.splitlines():
        match = re.match(r"^#{2,4}\s+(\d+(?:\.\d+b?)*)\.?\s", line)
        if match:
            found.add(match.group(1))
    return found


def test_section_parser_reads_headings():
    assert section_numbers("## 0. Notation\n### 1.6 (d) KL\n### 8.5b Where\n# Title") == {
        "0",
        "1.6",
        "8.5b",
    }


def test_every_algorithms_citation_names_an_existing_section():
    sections = section_numbers((DOCS / "ALGORITHMS.md").read_text(encoding="utf-8"))
    assert {"0", "1.2", "3.4", "5.4", "8.5"} <= sections
    missing = []
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".md") or ".venv" in path.parts:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for match in CITATION.finditer(text):
                number = match.group(1).rstrip(".")
                if number not in sections:
                    line = text.count("\n", 0, match.start()) + 1
                    missing.append(f"{path.relative_to(ROOT)}:{line} cites §{number}")
    assert not missing, "citations of missing ALGORITHMS.md sections:\n" + "\n".join(missing)


def test_user_docs_stay_inside_the_repository():
    for name in ("ALGORITHMS.md", "DESIGN.md", "SYNTHETIC_SHIFT.md", "ENVIRONMENT.md"):
        text = (DOCS / name).read_text(encoding="utf-8")
        assert "../shared" not in text and "shared/docs" not in text, name
