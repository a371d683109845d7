"""A worker encodes a made-up film once before its first job, so the job does not pay first-use costs."""

from __future__ import annotations

import logging

import pytest

from miemss_node.encode.context import KINDS
from miemss_node.warmup import warm_up_encoders


def test_the_warm_up_encodes_every_kind_asked_for_and_says_what_it_did(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="miemss_node.warmup"):
        assert warm_up_encoders(frozenset(KINDS)) == frozenset(KINDS)
        assert warm_up_encoders(frozenset({"SEG", "SR"})) == {"SEG", "SR"}
    actions = [getattr(record, "action", "") for record in caplog.records if record.name == "miemss_node.warmup"]
    assert actions.count("worker.warm_up") == 2 and actions.count("worker.warmed_up") == 2
    assert "made-up" in caplog.records[0].getMessage()


def test_a_failing_warm_up_is_logged_and_leaves_the_worker_to_its_jobs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="miemss_node.warmup"):
        assert warm_up_encoders(frozenset({"NOT-A-KIND"})) == frozenset()
    assert any(getattr(record, "action", "") == "worker.warm_up_failed" for record in caplog.records)
