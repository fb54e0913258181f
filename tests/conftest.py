"""Test set-up shared by all tests: the repository root and this folder on ``sys.path`` (see pack_env)."""
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one torch thread, and a busy 2-core machine makes two threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
