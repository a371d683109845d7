"""Crash soak: SIGKILL the node at random moments, restart it, and check nothing was lost.

Each trial starts ``miemss-node serve`` (receiver + worker process) in its own process group, sends
small real studies from several threads, kills the whole group with SIGKILL at a random moment
(during receiving or processing), restarts the node, and waits until it is quiet. Then it checks:

* every instance answered Success is on disk and in the database;
* every study ends with one SR (one distinct SOP Instance UID) at the destination, and no result
  UID differs between deliveries (deterministic UIDs: a re-run re-sends the same objects);
* no job is stuck: all are delivered.

    .venv/bin/python benchmarks/soak_crash.py --trials 50 [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom.data import get_testdata_file  # noqa: E402

from tests.support.net import free_port, wait_for_port  # noqa: E402
from tests.support.peers import PacsScp, store_datasets  # noqa: E402
from tests.support.studies import copies_as_new_study  # noqa: E402

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass
class SoakReport:
    """What the trials saw."""

    trials: int = 0
    instances_sent: int = 0
    instances_acknowledged: int = 0
    lost: int = 0
    studies: int = 0
    studies_without_sr: int = 0
    duplicated_results: int = 0
    stuck_jobs: int = 0
    hung_stops: int = 0
    problems: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        """True when nothing was lost, duplicated or stuck."""
        return not (self.lost or self.studies_without_sr or self.duplicated_results or self.stuck_jobs or self.hung_stops)




def start_node(config: Path, port: int) -> subprocess.Popen[bytes]:
    with (config.parent / "node.log").open("ab") as log:  # the child keeps its own copy open
        process = subprocess.Popen(
            [sys.executable, "-m", "miemss_node", "serve", "--config", str(config)],
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group: SIGKILL takes the worker child down too
        )
    wait_for_port(port, process=process)
    return process


def kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_trial(rng: random.Random, report: SoakReport, folder: Path, pacs: PacsScp, studies_per_trial: int) -> None:
    """One kill-and-restart trial in ``folder``."""
    port = free_port()
    config = folder / "config.toml"
    config.write_text(
        f"[node]\nport={port}\nstorage_dir='store'\n[study]\nsettle_seconds=0.5\n"
        "[worker]\npoll_seconds=0.1\nlease_seconds=3\nretry_backoff_seconds=0.2\nmax_attempts=10\n"
        "[delivery]\npoll_seconds=0.1\nbackoff_seconds=0.2\ntimeout_seconds=5\n"
        f"[[destinations]]\nae_title='PACS'\nhost='127.0.0.1'\nport={pacs.port}\n",
        encoding="utf-8",
    )
    source = get_testdata_file("CT_small.dcm")
    studies = [copies_as_new_study(Path(source), rng.randint(1, 3)) for _ in range(studies_per_trial)]
    acknowledged: list[str] = []
    lock = threading.Lock()

    def send(study: list) -> None:
        for ds in study:
            try:
                statuses = store_datasets([ds], port, calling_aet="SOAK")
            except (AssertionError, OSError, RuntimeError):
                return  # the node died under us: whatever was not acknowledged may be lost
            if statuses == [0]:
                with lock:
                    acknowledged.append(str(ds.SOPInstanceUID))

    node = start_node(config, port)
    senders = [threading.Thread(target=send, args=(study,)) for study in studies]
    for thread in senders:
        thread.start()
    time.sleep(rng.uniform(0.0, 4.0))  # sometimes while receiving, sometimes while processing
    kill_group(node)
    for thread in senders:
        thread.join()

    node = start_node(config, port)
    try:
        wait_until_quiet(folder / "store" / "miemss.db", timeout=120)
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.send_signal(signal.SIGUSR1)  # dump its threads into node.log
            time.sleep(2)
            kill_group(node)
            report.problems.append("node did not stop within 60 s of SIGTERM:\n" + (folder / "node.log").read_text()[-6000:])
            report.hung_stops += 1
    check(folder / "store", studies, acknowledged, pacs, report)
    report.trials += 1
    report.instances_sent += sum(len(study) for study in studies)
    report.instances_acknowledged += len(acknowledged)


def wait_until_quiet(database: Path, timeout: float) -> None:
    """Until every study is settled and every job delivered (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as db:
            unsettled = db.execute("SELECT count(*) FROM studies WHERE unsettled").fetchone()[0]
            open_jobs = db.execute("SELECT count(*) FROM jobs WHERE state NOT IN ('DELIVERED', 'FAILED')").fetchone()[0]
        if not unsettled and not open_jobs:
            return
        time.sleep(0.2)


def check(store: Path, studies: list[list], acknowledged: list[str], pacs: PacsScp, report: SoakReport) -> None:
    with sqlite3.connect(store / "miemss.db") as db:
        recorded = dict(db.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
        jobs = db.execute("SELECT id, state, last_error FROM jobs").fetchall()
    for uid in acknowledged:
        if uid not in recorded or not (store / recorded[uid]).is_file():
            report.lost += 1
            report.problems.append(f"acknowledged instance {uid} is missing")
    stuck = [job for job in jobs if job[1] != "DELIVERED"]
    report.stuck_jobs += len(stuck)
    report.problems += [f"job {job_id} ended {state}: {error}" for job_id, state, error in stuck]
    srs: dict[str, set[str]] = defaultdict(set)
    for ds in list(pacs.received):
        if str(ds.SOPClassUID).startswith(SR_PREFIX):
            srs[str(ds.StudyInstanceUID)].add(str(ds.SOPInstanceUID))
    for study in studies:
        uid = str(study[0].StudyInstanceUID)
        if not any(str(ds.SOPInstanceUID) in acknowledged for ds in study):
            continue  # nothing of it was acknowledged: the sender would send it again
        report.studies += 1
        versions = len(srs.get(uid, ()))
        if versions == 0:
            report.studies_without_sr += 1
            report.problems.append(f"study {uid} has no SR at the destination")
        elif versions > 1:
            # A second SR is only right when instances arrived after the first job was queued.
            report.duplicated_results += versions - 1
            report.problems.append(f"study {uid} has {versions} different SRs")


def run_trials(trials: int, seed: int, studies_per_trial: int = 3) -> SoakReport:
    """Run ``trials`` kill-and-restart trials; returns the report."""
    rng = random.Random(seed)
    report = SoakReport()
    pacs = PacsScp(ae_title="PACS")
    try:
        for _ in range(trials):
            with tempfile.TemporaryDirectory() as folder:
                run_trial(rng, report, Path(folder), pacs, studies_per_trial)
    finally:
        pacs.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--studies", type=int, default=3, help="studies sent per trial")
    parser.add_argument("--log", help="write every problem (with the node's log) to this file")
    args = parser.parse_args()
    started = time.monotonic()
    report = run_trials(args.trials, args.seed, args.studies)
    print(f"trials: {report.trials} in {time.monotonic() - started:.0f} s")
    print(f"instances sent: {report.instances_sent}, acknowledged (Success): {report.instances_acknowledged}")
    print(f"acknowledged but lost: {report.lost}")
    print(f"studies with acknowledged instances: {report.studies}, without an SR: {report.studies_without_sr}")
    print(f"duplicated results (extra SR versions): {report.duplicated_results}")
    print(f"stuck jobs: {report.stuck_jobs}; stops that hung: {report.hung_stops}")
    for problem in report.problems[:20]:
        print(f"  {problem}")
    if args.log and report.problems:
        Path(args.log).write_text("\n\n".join(report.problems))
    raise SystemExit(0 if report.ok() else 1)


if __name__ == "__main__":
    main()
