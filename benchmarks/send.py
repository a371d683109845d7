"""Sending a study's results: the sender's association with Nagle's algorithm off (the node's way) and on
(the baseline, pynetdicom's default, in the same process), to dcmtk's storescp and to a pynetdicom SCP.

Encodes the results of a one-image CR study made from the WG04 chest CR (1841x1955, pydicom-data):
SEG, SC and SR; then sends them ``--rounds`` times each way, alternating, with ``send_files`` as the
node's sender does, one association per send. Prints the medians and their ratio per peer.

    .venv/bin/python benchmarks/send.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from miemss_node import send  # noqa: E402
from miemss_node.config import Destination  # noqa: E402
from miemss_node.encode.study import EncodeContext, encode_study  # noqa: E402
from miemss_node.pipeline.base import PipelineSettings  # noqa: E402
from miemss_node.pipeline.report import build_report  # noqa: E402
from miemss_node.pipeline.runner import analyse_dataset  # noqa: E402
from tests.support.net import free_port, wait_for_port  # noqa: E402
from tests.support.peers import PacsScp  # noqa: E402


def encoded_results(folder: Path) -> list[Path]:
    """The SEG, SC and SR of the WG04 chest film, written to ``folder``."""
    source = dcmread(get_testdata_file("RG1_J2KI.dcm"))
    analyses = analyse_dataset(source, PipelineSettings())
    encoded = encode_study([source], analyses, build_report(analyses), EncodeContext(job_key="send-benchmark"))
    paths = []
    for item in encoded:
        path = folder / f"{item.kind}.dcm"
        item.dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def timed_sends(paths: list[Path], destination: Destination, rounds: int) -> dict[str, list[float]]:
    """Seconds of each send, Nagle off (as shipped) and on (the helper that turns it off made a no-op)."""
    shipped = send.send_at_once
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(rounds):
            for nagle in ("off", "on"):
                send.send_at_once = shipped if nagle == "off" else (lambda assoc: None)
                started = time.perf_counter()
                report = send.send_files(paths, destination, calling_aet="MIEMSS", timeout_seconds=30)
                seconds[nagle].append(time.perf_counter() - started)
                assert report.outcome is send.SendOutcome.DELIVERED, report
    finally:
        send.send_at_once = shipped
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        paths = encoded_results(Path(scratch))
        sizes = ", ".join(f"{p.stem} {p.stat().st_size / 1e6:.1f} MB" for p in paths)
        print(f"results of one CR 1841x1955: {sizes}")
        port = free_port()
        received = Path(scratch) / "storescp"
        received.mkdir()
        storescp = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(received), "+uf", str(port)], stderr=subprocess.DEVNULL
        )
        pacs = PacsScp(ae_title="PACS")
        try:
            wait_for_port(port)
            peers = {
                "dcmtk storescp": Destination(name="dcmtk", ae_title="PACS", host="127.0.0.1", port=port),
                "pynetdicom SCP": Destination(name="pynetdicom", ae_title="PACS", host="127.0.0.1", port=pacs.port),
            }
            for name, destination in peers.items():
                seconds = timed_sends(paths, destination, args.rounds)
                off, on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
                print(
                    f"{name}: Nagle off {off:.3f} s, on (baseline) {on:.3f} s (medians of {args.rounds}); "
                    f"ratio {off / on:.2f}, {1000 * (on - off) / len(paths):.0f} ms less per object"
                )
        finally:
            storescp.terminate()
            storescp.wait(10)
            pacs.stop()


if __name__ == "__main__":
    main()
