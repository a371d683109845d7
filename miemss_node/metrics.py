"""Prometheus metrics: counters of what this process did, and the queue read from the database.

Two kinds of numbers, exposed together on ``/metrics`` (:mod:`miemss_node.web.server`):

- Counters of events in this process (instances and bytes received, associations, deliveries by
  outcome, dashboard retries). Each counter is incremented next to the log line of the same event,
  so a counter and a ``grep`` of its action agree. They start at zero when the process starts.
- Numbers read from the database at scrape time by :class:`DatabaseCollector`: jobs by state,
  queue depth, deliveries by state, studies awaiting review and the oldest wait, and the
  pipeline's stage durations. Workers run in child
  processes (and, with PostgreSQL, on other hosts); they record each stage's duration in the
  ``stage_durations`` table, so ``/metrics`` shows every worker's timings without sharing memory
  (no ``PROMETHEUS_MULTIPROC_DIR`` needed).

Metric names follow Prometheus conventions: ``miemss_`` prefix, ``_total`` on counters (added by
the client library), base units (seconds, bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.queue import repository
from miemss_node.queue.models import DeliveryState, JobState

logger = logging.getLogger(__name__)

#: The registry of this process's counters (and its CPU and memory use).
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

INSTANCES_RECEIVED = Counter(
    "miemss_instances_received",
    "C-STORE requests by outcome (stored, duplicate, refused, conflict, failed), as the receive.* log actions.",
    ["outcome"],
    registry=REGISTRY,
)
BYTES_RECEIVED = Counter(
    "miemss_received_bytes",
    "Bytes of the instances stored or recognised as duplicates.",
    registry=REGISTRY,
)
ASSOCIATIONS = Counter(
    "miemss_associations",
    "Associations with the receiver by event (established, rejected, released, aborted).",
    ["event"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "miemss_deliveries",
    "Delivery attempts by destination and outcome (delivered, pending = will retry, failed), "
    "as the send.* log actions.",
    ["destination", "outcome"],
    registry=REGISTRY,
)
DASHBOARD_RETRIES = Counter(
    "miemss_dashboard_retries",
    "Failed deliveries made pending again from the dashboard.",
    registry=REGISTRY,
)

#: Upper bounds (seconds) of the stage duration histogram's buckets.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: Outcomes and events pre-declared at zero, so a dashboard shows them before the first one.
for _outcome in ("stored", "duplicate", "refused", "failed"):
    INSTANCES_RECEIVED.labels(outcome=_outcome)
for _event in ("established", "rejected", "released", "aborted"):
    ASSOCIATIONS.labels(event=_event)


class DatabaseCollector(Collector):
    """Reads the queue from the database at each scrape.

    Yields ``miemss_database_up`` (1, or 0 when the query failed, in which case nothing else is
    yielded), ``miemss_jobs{state}``, ``miemss_queue_depth{queue}`` (queued jobs and pending
    deliveries), ``miemss_delivery_states{state}``, ``miemss_review_awaiting`` (jobs with results held
    for review), ``miemss_review_oldest_wait_seconds`` (how long the longest-held results have
    waited; 0 when none wait) and the histogram ``miemss_stage_duration_seconds{stage}``.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def describe(self) -> list[Metric]:
        """Nothing: the metric set depends on the database, so it is not checked at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Query the database and yield the metrics."""
        up = GaugeMetricFamily("miemss_database_up", "1 when the database answered this scrape, else 0.")
        try:
            with self.sessions() as session:
                jobs = repository.job_counts(session)
                deliveries = repository.delivery_counts(session)
                histograms = repository.stage_histograms(session, STAGE_BUCKETS)
                awaiting = repository.awaiting_review_count(session)
                oldest = repository.oldest_review_since(session)
        except SQLAlchemyError as exc:
            logger.warning(
                "metrics: database did not answer (%s)",
                type(exc).__name__,
                extra={"action": "metrics.database_unavailable"},
            )
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_state = GaugeMetricFamily("miemss_jobs", "Jobs in each state.", labels=["state"])
        for job_state in JobState:
            by_state.add_metric([job_state.value], jobs.get(job_state, 0))
        yield by_state
        depth = GaugeMetricFamily(
            "miemss_queue_depth", "Work waiting: queued jobs and pending deliveries.", labels=["queue"]
        )
        depth.add_metric(["jobs"], jobs.get(JobState.QUEUED, 0))
        depth.add_metric(["deliveries"], deliveries.get(DeliveryState.PENDING, 0))
        yield depth
        delivery_states = GaugeMetricFamily(
            "miemss_delivery_states", "Deliveries (one per job and destination) in each state.", labels=["state"]
        )
        for delivery_state in DeliveryState:
            delivery_states.add_metric([delivery_state.value], deliveries.get(delivery_state, 0))
        yield delivery_states
        yield GaugeMetricFamily(
            "miemss_review_awaiting", "Jobs whose results are held until a reviewer decides.", value=awaiting
        )
        wait = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
        yield GaugeMetricFamily(
            "miemss_review_oldest_wait_seconds",
            "How long the results held longest for review have waited (0 when none wait).",
            value=wait,
        )
        stages = HistogramMetricFamily(
            "miemss_stage_duration_seconds",
            "Duration of each pipeline stage per image or frame, and of each job's encoding, "
            "as recorded by the workers.",
            labels=["stage"],
        )
        for histogram in histograms:
            buckets = [(_bound(bound), float(count)) for bound, count in histogram.buckets]
            buckets.append(("+Inf", float(histogram.count)))
            stages.add_metric([histogram.stage], buckets, sum_value=histogram.total_seconds)
        yield stages


def _bound(value: float) -> str:
    return repr(float(value))


def exposition(database: CollectorRegistry | None) -> bytes:
    """The text exposition of this process's counters followed by the database's metrics."""
    text = generate_latest(REGISTRY)
    if database is not None:
        text += generate_latest(database)
    return text


def database_registry(sessions: sessionmaker[Session]) -> CollectorRegistry:
    """A registry holding one :class:`DatabaseCollector` (one per node: tests run several)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(sessions))
    return registry
