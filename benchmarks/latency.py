"""Latency of the whole node: last instance received -> last result delivered, minus settle time.

Runs ``miemss-node serve`` in a subprocess on loopback, plays the PACS in this process, sends an
N-image CR study made from the WG04 chest CR (1841x1955, pydicom-data) with new SOP Instance UIDs,
and prints the latency, the node's peak memory (main process and worker children), and, as the
in-process baseline, the time of the pipeline and encoders alone on the same images.

    .venv/bin/python benchmarks/latency.py [--images 4] [--studies 1] [--settle 2] [--image-processes N] [--config-extra TOML]

``--images 1,4 --studies 5`` sends 1-image and 4-image studies in turn to the same node, five rounds, and
prints each size's warm median (rounds after the first) and their ratio: both sizes are measured in the
same minutes, so a machine that is slower one minute than the next does not move the ratio.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.net import free_port, wait_for_port  # noqa: E402
from tests.support.peers import PacsScp, store_datasets  # noqa: E402
from tests.support.studies import copies_as_new_study  # noqa: E402


def status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (VmHWM: the peak, VmRSS: now), in MB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (worker processes of the node; image-pool processes of a worker)."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: worker processes and their image pools' processes."""
    found = children(pid)
    return found + [grandchild for child in found for grandchild in descendants(child)]


def in_process_baseline(study: list[Dataset]) -> float:
    """Seconds for the pipeline and encoders alone on the study, in this process, warm: the study is
    processed once untimed first, as the node's worker warms up before its first job."""
    from miemss_node.encode.study import EncodeContext, encode_study
    from miemss_node.pipeline.base import PipelineSettings
    from miemss_node.pipeline.report import build_report
    from miemss_node.pipeline.runner import analyse_dataset

    def run(key: str) -> float:
        started = time.perf_counter()
        analyses = [a for ds in study for a in analyse_dataset(ds, PipelineSettings())]
        encode_study(study, analyses, build_report(analyses), EncodeContext(job_key=key))
        return time.perf_counter() - started

    run("baseline-warm-up")
    return run("baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="4", help="images per study; a comma list sends each size in turn")
    parser.add_argument(
        "--studies",
        type=int,
        default=1,
        help="studies (of each size) sent one after the other; the later ones show a warm worker",
    )
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=0.1,
        help="[worker] and [delivery] poll_seconds (the node's default: 0.25)",
    )
    parser.add_argument("--config-extra", default="", help="TOML appended to the generated config")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds between start and sending")
    parser.add_argument(
        "--image-processes", type=int, default=0, help="[worker] image_processes (0: the cores; 1: no pool)"
    )
    parser.add_argument("--log", action="store_true", help="show the node's INFO log (job, stage and send timings)")
    args = parser.parse_args()

    sizes = [int(size) for size in args.images.split(",")]
    film = dcmread(get_testdata_file("RG1_J2KI.dcm"))
    studies = [copies_as_new_study(film, size) for _ in range(args.studies) for size in sizes]
    study = studies[0]
    arrivals: list[tuple[str, float]] = []
    pacs = PacsScp(
        ae_title="PACS",
        status_for=lambda ds: arrivals.append((str(ds.StudyInstanceUID), time.perf_counter())) or 0,
    )
    port = free_port()
    latencies: list[float] = []
    sent_in: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text(
            f"[node]\nport={port}\nstorage_dir='store'\n[study]\nsettle_seconds={args.settle}\n"
            f"[delivery]\npoll_seconds={args.poll_seconds}\n[worker]\npoll_seconds={args.poll_seconds}\n"
            f"image_processes={args.image_processes}\n"
            f"[[destinations]]\nae_title='PACS'\nhost='127.0.0.1'\nport={pacs.port}\n{args.config_extra}\n",
            encoding="utf-8",
        )
        env = {**os.environ, "MIEMSS_LOG_LEVEL": "INFO" if args.log else "WARNING"}
        node = subprocess.Popen([sys.executable, "-m", "miemss_node", "serve", "--config", str(config)], env=env)
        peaks: dict[int, float] = {}
        below_peak = 0.0  # the most the worker processes and their pools held at one moment
        workers: set[int] = set()
        try:
            wait_for_port(port)
            time.sleep(args.warmup)  # let the worker process import and load its models, as a running node has
            for each in studies:
                uid = str(each[0].StudyInstanceUID)
                sent_at = time.perf_counter()
                statuses = store_datasets(each, port, called_aet="MIEMSS")
                last_received = time.perf_counter()
                sent_in.append(last_received - sent_at)
                assert statuses == [0] * len(each), statuses
                expected = 2 * len(each) + 1  # SEG + SC per image (when regions are found) + one SR
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    workers.update(children(node.pid))
                    below = descendants(node.pid)
                    for pid in [node.pid, *below]:
                        peaks[pid] = max(peaks.get(pid, 0.0), status_mb(pid, "VmHWM"))
                    below_peak = max(below_peak, sum(status_mb(pid, "VmRSS") for pid in below))
                    mine = [t for study_uid, t in arrivals if study_uid == uid]
                    received = [ds for ds in pacs.received if str(ds.StudyInstanceUID) == uid]
                    if len(mine) >= expected or (
                        mine
                        and time.perf_counter() - mine[-1] > 5
                        and any(str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.88") for ds in received)
                    ):
                        break
                    time.sleep(0.05)
                mine = [t for study_uid, t in arrivals if study_uid == uid]
                if not mine:
                    raise SystemExit(f"no result arrived for study {len(latencies) + 1}")
                latencies.append(mine[-1] - last_received - args.settle)
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=120)
            pacs.stop()
    main_peak = peaks.get(node.pid, 0.0)
    worker_peak = max((v for pid, v in peaks.items() if pid in workers), default=0.0)
    pool_peaks = sorted((v for pid, v in peaks.items() if pid != node.pid and pid not in workers), reverse=True)
    memory = (
        f"peak memory: receiver process {main_peak:.0f} MB; worker process {worker_peak:.0f} MB; image-pool processes "
        f"{', '.join(f'{v:.0f}' for v in pool_peaks) or 'none'} MB; the {len(peaks) - 1} worker and pool processes "
        f"together {below_peak:.0f} MB at most at one time (sampled every 50 ms)"
    )
    if len(sizes) > 1:
        print_sizes(sizes, studies, latencies)
        print(memory)
        return
    latency = latencies[0]
    baseline = in_process_baseline(study)
    print(f"study: {len(study)} x CR 1841x1955 (JPEG 2000), sent in {sent_in[0]:.2f} s")
    print(f"results received: {len(pacs.received)} for {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}")
    print(f"latency (last instance -> last result, minus settle {args.settle:g} s): {latency:.2f} s")
    print(f"baseline (pipeline + encoders in one process, same images): {baseline:.2f} s")
    print(f"ratio latency / baseline: {latency / baseline:.2f}")
    if len(latencies) > 1:
        later = latencies[1:]
        print(
            f"later studies, one after the other (the worker warm): {', '.join(f'{v:.2f}' for v in later)} s; "
            f"median {sorted(later)[len(later) // 2]:.2f} s, ratio {sorted(later)[len(later) // 2] / baseline:.2f}"
        )
    print(memory)


def print_sizes(sizes: list[int], studies: list[list[Dataset]], latencies: list[float]) -> None:
    """Each size's latencies, its warm median against its in-process baseline, and the ratio of the
    largest size's warm median to the smallest's."""
    medians = {}
    for size in sizes:
        mine = [latency for study, latency in zip(studies, latencies, strict=True) if len(study) == size]
        warm = sorted(mine[1:]) or mine
        medians[size] = warm[len(warm) // 2]
        baseline = in_process_baseline(next(study for study in studies if len(study) == size))
        print(
            f"{size} image(s): latencies {', '.join(f'{v:.2f}' for v in mine)} s; warm median {medians[size]:.2f} s; "
            f"baseline (pipeline + encoders in one process) {baseline:.2f} s; ratio {medians[size] / baseline:.2f}"
        )
    print(f"ratio {max(sizes)} images / {min(sizes)} (warm medians): {medians[max(sizes)] / medians[min(sizes)]:.2f}")


if __name__ == "__main__":
    main()
