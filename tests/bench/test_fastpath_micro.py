"""bench/fastpath_micro.py runs both forwarding paths and every copy arrives (no timing asserted)."""

import argparse

import pytest

from bench import fastpath_micro
from sfu import fastpath


@pytest.mark.parametrize("profile", list(fastpath_micro.PROFILES))
async def test_micro_bench_reports_both_paths_and_every_copy_arrives(profile):
    args = argparse.Namespace(consumers=3, packets=60, rounds=2, size=1000, profile=profile)
    result = await fastpath_micro.run(args)
    assert result["profile"] == profile
    paths = ("fast", "python") if fastpath.available else ("python",)
    for path in paths:
        assert result[f"{path}_copies"] == 3 * 60
        assert result[f"{path}_received"] == result[f"{path}_copies"]
        assert result[f"{path}_us_per_copy"] > 0
    assert fastpath.enabled == fastpath.available  # left as it found it
