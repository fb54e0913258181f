"""Test set-up shared by all tests: the repository root and this folder on ``sys.path`` (see pack_env)."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
