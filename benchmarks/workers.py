"""Worker throughput: studies per minute with 1 and 2 worker processes on this machine.

For each worker count: a receiver (no worker) takes K one-image chest CR studies (the WG04 chest,
1841x1955, under new UIDs); once all are queued, N worker processes start and the time until every
job is done is measured (no destination, so jobs end when encoded). Prints studies/min and the
ratio to one worker, measured in the same run.

    .venv/bin/python benchmarks/workers.py [--studies 8] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from miemss_node.config import load_config  # noqa: E402
from miemss_node.node import Node  # noqa: E402
from miemss_node.queue.models import Job, JobState  # noqa: E402
from tests.support.peers import store_datasets  # noqa: E402
from tests.support.studies import copies_as_new_study  # noqa: E402


def count_jobs(node: Node, *states: JobState) -> int:
    with node.sessions() as session:
        return int(session.scalar(select(func.count(Job.id)).where(Job.state.in_(states))) or 0)


def run(workers: int, studies: int) -> float:
    """Seconds for ``workers`` worker processes to process ``studies`` queued studies."""
    source = dcmread(get_testdata_file("RG1_J2KI.dcm"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text("[node]\nport = 0\nstorage_dir = 'store'\n[study]\nsettle_seconds = 0.2\n"
                        "[worker]\npoll_seconds = 0.05\n[logging]\nlevel = 'WARNING'\n")
        config = load_config(path, environ={})
        receiver = Node(config, worker_count=0)
        receiver.start()
        try:
            for _ in range(studies):
                assert store_datasets(copies_as_new_study(source, 1), receiver.port) == [0]
            while count_jobs(receiver, JobState.QUEUED) < studies:
                time.sleep(0.1)
            pool = Node(replace(config, worker=replace(config.worker, count=workers)), with_receiver=False)
            started = time.perf_counter()
            pool.start()
            try:
                while count_jobs(receiver, JobState.DELIVERED, JobState.FAILED) < studies:
                    time.sleep(0.05)
                return time.perf_counter() - started
            finally:
                pool.stop()
        finally:
            receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    rows = [(n, run(n, args.studies)) for n in (int(w) for w in args.workers.split(","))]
    base = args.studies / rows[0][1] * 60
    print(f"{'workers':>7} {'seconds':>8} {'studies/min':>12} {'x 1 worker':>11}")
    for n, seconds in rows:
        per_minute = args.studies / seconds * 60
        print(f"{n:>7} {seconds:>8.1f} {per_minute:>12.1f} {per_minute / base:>11.2f}")
    print("seconds include starting the worker processes (imports, ~2 s), as after a deploy")


if __name__ == "__main__":
    main()
