"""Fuzz the receiver for a while, over loopback, and count what went wrong.

Two kinds of input (``--kind``):

- ``files``: truncated and bit-flipped real files, sent raw with a C-STORE;
- ``pdus``: generated PDUs and association sequences (hypothesis strategies of
  ``tests/support/pdus.py``): A-ASSOCIATE-RQ, P-DATA-TF with C-ECHO and C-STORE messages,
  A-RELEASE-RQ, A-ABORT, lying lengths, flipped bits, cut PDUs, garbage, connections left open.

The node runs as `miemss-node serve` in a child process. Counts inputs tried, crashes (0xC211 = an
exception escaped our handler, an ERROR logged by the node, an uncaught exception in one of its
threads with our code in its traceback, or the node not answering C-ECHO for 15 s), hangs (a
connection the node neither answered nor closed within --hang-seconds), threads of pynetdicom that
died (counted apart: a library race the receiver's sweep cleans up after), and the node's RSS at the
start, after the warm-up and at the end.

    .venv/bin/python benchmarks/fuzz_receiver.py --kind pdus --minutes 10
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, Verbosity, given, settings  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pynetdicom import _config  # noqa: E402

from tests.support.fuzzing import mutate, node_is_serving, send_raw  # noqa: E402
from tests.support.hostile import rss_bytes  # noqa: E402
from tests.support.net import free_port, wait_for_port  # noqa: E402
from tests.support.pdus import association_sequences, play  # noqa: E402

SEEDS = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "RG1_J2KI.dcm"]

#: The last line of a traceback: the exception and its message.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Warning)\b")

#: The node's network timeout while fuzzing: connections left open end after it.
NETWORK_TIMEOUT = 2.0


class Tally:
    """What happened, counted."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.outcomes: Counter[str] = Counter()
        self.tried = self.crashes = self.hangs = 0
        self.rss: list[int] = []
        self.threads: list[int] = []


class TimeUp(Exception):
    """The fuzzing time is over."""


def still_serving(port: int) -> bool:
    """C-ECHO answered within 15 s (the fuzzer's own connections may hold every slot a moment)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if node_is_serving(port):
            return True
        time.sleep(1.0)
    return False


def fuzz_files(port: int, tally: Tally, deadline: float, folder: Path, seed: int, hang_seconds: float) -> None:
    """Mutated real files, each sent raw in one C-STORE."""
    _config.STORE_SEND_CHUNKED_DATASET = True  # the SCU sends the file's bytes without decoding them
    rng = random.Random(seed)
    seeds = [Path(get_testdata_file(name)).read_bytes() for name in SEEDS]
    path = folder / "mutant.dcm"
    while time.monotonic() < deadline:
        data = rng.choice(seeds)
        cut = rng.randrange(len(data)) if rng.random() < 0.5 else None
        flips = [rng.randrange(len(data) * 8) for _ in range(rng.randint(0, 16))]
        path.write_bytes(mutate(data, cut=cut, flips=flips))
        started = time.monotonic()
        status = send_raw(path, port, timeout=hang_seconds)
        tally.tried += 1
        if time.monotonic() - started >= hang_seconds:
            tally.hangs += 1
        if status == 0xC211 or not still_serving(port):
            tally.crashes += 1
        tally.outcomes["file: not sent (SCU refused)" if status is None else f"file: 0x{status & 0xFFFF:04X}"] += 1
        sample(tally)


def fuzz_pdus(port: int, tally: Tally, deadline: float, hang_seconds: float) -> None:
    """Generated PDUs and association sequences, played on raw sockets."""

    @settings(
        max_examples=10**9,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
    )
    @given(sequence=association_sequences())
    def one(sequence: tuple[list[bytes], bool]) -> None:
        if time.monotonic() >= deadline:
            raise TimeUp
        steps, half_close = sequence
        played = play(port, steps, half_close, hang_seconds=hang_seconds)
        tally.tried += 1
        if played.closed_after is None:
            tally.hangs += 1
        reply = {None: "nothing", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
                 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}.get(played.first_reply, "other")
        tally.outcomes[f"pdus: first reply {reply}"] += 1
        if tally.tried % 25 == 0 and not still_serving(port):
            tally.crashes += 1
        sample(tally)

    try:
        one()
    except TimeUp:
        pass


def thread_count(pid: int) -> int:
    """Threads of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def sample(tally: Tally) -> None:
    if tally.tried % 50 == 0:
        tally.rss.append(rss_bytes(tally.pid))


def thread_deaths(log: str) -> tuple[list[str], Counter[str]]:
    """Uncaught thread exceptions in the node's stderr: (ours, pynetdicom's by exception)."""
    ours: list[str] = []
    library: Counter[str] = Counter()
    for block in log.split("Exception in thread")[1:]:
        lines = block.splitlines()
        end = next((i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)), len(lines) - 1)
        exception = lines[end][:120] if lines else "?"
        if any("/miemss_node/" in line for line in lines[:end]):
            ours.append(exception)
        else:
            library[exception] += 1
    return ours, library


def node_errors(log: str) -> list[str]:
    """ERROR records of the node's own loggers (pynetdicom's, e.g. "Network timeout reached", are not)."""
    return [line for line in log.splitlines() if " ERROR " in line and " pynetdicom." not in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kind", choices=["files", "pdus", "all"], default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the mutants' invalid values make pydicom warn on every read
    logging.disable(logging.CRITICAL)  # the SCU side's own errors are not the node's
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        config_path = Path(folder) / "config.toml"
        config_path.write_text(
            f"[node]\nport = {port}\nstorage_dir = 'storage'\nmax_pdu = 16384\n"
            f"network_timeout_seconds = {NETWORK_TIMEOUT}\nacse_timeout_seconds = {NETWORK_TIMEOUT}\n"
            "[worker]\ncount = 0\n[logging]\nlevel = 'WARNING'\n"
            # serve needs a destination; with no worker, nothing is ever sent to it.
            f"[[destinations]]\nname = 'pacs'\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = {free_port()}\n"
        )
        log_path = Path(folder) / "serve.log"
        with log_path.open("wb") as log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "miemss_node", "serve", "--config", str(config_path)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        tally = Tally(serve.pid)
        try:
            wait_for_port(port, process=serve)
            tally.rss.append(rss_bytes(serve.pid))
            tally.threads.append(thread_count(serve.pid))
            started = time.monotonic()
            end = started + args.minutes * 60
            if args.kind in ("pdus", "all"):
                fuzz_pdus(port, tally, end if args.kind == "pdus" else started + args.minutes * 30, args.hang_seconds)
            if args.kind in ("files", "all"):
                fuzz_files(port, tally, end, Path(folder), args.seed, args.hang_seconds)
            if not still_serving(port):
                tally.crashes += 1
            time.sleep(NETWORK_TIMEOUT * 3)  # let the last connections end before counting threads
            tally.rss.append(rss_bytes(serve.pid))
            tally.threads.append(thread_count(serve.pid))
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                serve.kill()
        text = log_path.read_text(errors="replace")
    errors = node_errors(text)
    ours, library = thread_deaths(text)
    crashes = tally.crashes + len(errors) + len(ours)
    mb = [value / 2**20 for value in tally.rss]
    print(f"inputs tried: {tally.tried} in {args.minutes:g} min ({args.kind}); crashes: {crashes}; hangs: {tally.hangs}")
    if mb:
        quarters = ", ".join(f"{mb[min(len(mb) - 1, round(q * (len(mb) - 1)))]:.1f}" for q in (0.25, 0.5, 0.75))
        print(f"serve RSS MB: start {mb[0]:.1f}, after 100 inputs {mb[min(2, len(mb) - 1)]:.1f}, "
              f"at 1/4, 1/2, 3/4 of the run {quarters}, max {max(mb):.1f}, end {mb[-1]:.1f}; "
              f"threads: start {tally.threads[0]}, end {tally.threads[-1]}")
    for outcome, count in tally.outcomes.most_common():
        print(f"  {outcome}: {count}")
    for error in (errors + ours)[:10]:
        print(f"  error: {error[:200]}")
    for error, count in library.most_common():
        print(f"  pynetdicom thread died ({count}x): {error}")
    raise SystemExit(1 if crashes or tally.hangs else 0)


if __name__ == "__main__":
    main()
