"""The replay probe of freqca_lab.measure_replay: blocks replaced by what they added in a recorded run."""
from __future__ import annotations

import torch

from freqca_core import CacheConfig
from freqca_lab.measure_replay import BlockReplay
from freqca_lab.runner import generate
from test_bench import tiny


def test_replay_reproduces_the_recorded_run_and_drifts_only_through_cached_steps(one_torch_thread):
    torch.manual_seed(0)
    model, table = tiny()

    def run(net, controller=None):
        return generate(net, [0, 5], [11, 12], 8, 3.0, controller, table=table, size=(16, 16)).images

    recorder = BlockReplay(model)
    reference = run(recorder)
    assert torch.equal(reference, run(model)) and len(recorder.added) == 8  # recording changes nothing
    replay = BlockReplay(model, replay=True, added=recorder.added)
    # every step full: the recorded run, up to the rounding of (crf - embedding) + embedding
    torch.testing.assert_close(run(replay), reference, rtol=1e-5, atol=1e-5)
    cached = CacheConfig(method="res-taylor", taylor_order=1, warmup=1, interval=3)
    replayed, true = run(replay, cached.new_controller(8)), run(model, cached.new_controller(8))
    assert torch.isfinite(replayed).all() and not torch.equal(replayed, reference)
    # the replay follows the true cached run more closely than the uncached one does
    assert (replayed - true).abs().mean() < (reference - true).abs().mean()
