"""Test set-up shared by all tests: the repository root on ``sys.path`` (see ``freqca_lab.comfy.env``), the
``comfyui`` fixture, and the tiers (see tiers.py): a tier that cannot run here skips its tests with one reason,
reported as one line per tier."""
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import tiers  # noqa: E402  (needs the repository root on sys.path)

TIER = pytest.StashKey[str]()


def pytest_collection_modifyitems(config, items):
    """Mark every test of an unavailable tier skipped (the tier is found from the test's fixture closure);
    with $FREQCA_REQUIRE_TIERS set (CI), an unavailable tier is an error instead."""
    skipped = False
    for item in items:
        name = tiers.tier_of(item.fixturenames)
        reason = name and tiers.session_reasons()[name]
        if reason:
            skipped = True
            item.stash[TIER] = reason
            item.add_marker(pytest.mark.skip(reason=reason))
    if skipped and os.environ.get("FREQCA_REQUIRE_TIERS"):
        reasons = [reason for reason in tiers.session_reasons().values() if reason]
        raise pytest.UsageError("FREQCA_REQUIRE_TIERS is set, but these tiers cannot run:\n" + "\n".join(reasons))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Give a tier's skips one location (tiers.py) so that ``-ra`` folds them into one line per tier."""
    report = yield
    reason = item.stash.get(TIER, None)
    if reason and report.skipped:
        report.longrepr = (tiers.__file__, None, reason)
    return report


@pytest.fixture(scope="session")
def comfyui():
    """The ComfyUI source tree, imported in CPU mode (see ``harness.import_comfyui``); the ComfyUI tier."""
    from freqca_lab.comfy.env import find_comfyui
    from freqca_lab.comfy.harness import import_comfyui

    path = find_comfyui()
    import_comfyui(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one torch thread, and a busy 2-core machine makes two threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
