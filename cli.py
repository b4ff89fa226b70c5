"""Run ``python cli.py fit|validate|test|eval|annotate ...`` (see README.md)."""

import sys

from lightning_robust.cli import main

if __name__ == "__main__":
    sys.exit(main())
