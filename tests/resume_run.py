"""``python tests/resume_run.py fit --config ...``: the CLI as a script file (Lightning's DDP
launcher re-runs ``sys.argv`` for the other ranks, which ``python -c`` cannot be)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lightning_robust.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
