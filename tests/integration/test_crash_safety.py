"""A short crash soak in CI: SIGKILL the node at random moments, restart, nothing lost or doubled.

The full run (50 trials) is by hand: ``.venv/bin/python benchmarks/soak_crash.py --trials 50``.
"""

from __future__ import annotations

import pytest

from benchmarks.soak_crash import run_trials


@pytest.mark.slow
def test_kill_and_restart_loses_nothing() -> None:
    report = run_trials(trials=3, seed=7)
    assert report.trials == 3 and report.instances_acknowledged > 0
    assert report.ok(), report.problems
