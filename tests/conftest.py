"""Test set-up shared by all tests: the repository root on ``sys.path`` (see ``freqca_lab.comfy.env``)."""
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one torch thread, and a busy 2-core machine makes two threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
