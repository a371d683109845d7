"""Fuzz the receiver for a while, over loopback, and count what went wrong.

Two kinds of input (``--kind``):

- ``files``: truncated and bit-flipped real files, sent raw with a C-STORE;
- ``pdus``: generated PDUs and association sequences (hypothesis strategies of
  ``tests/support/pdus.py``): A-ASSOCIATE-RQ, P-DATA-TF with C-ECHO and C-STORE messages,
  A-RELEASE-RQ, A-ABORT, lying lengths, flipped bits, cut PDUs, garbage, connections left open.

Counts inputs tried, crashes (0xC211 = an exception escaped our handler, an ERROR logged by the
node, an uncaught exception in one of its threads, or the node no longer answering C-ECHO), hangs
(a connection the node neither answered nor closed within --hang-seconds), and the node's RSS
(this process: the node runs in it) at the start, after the warm-up and at the end.

    .venv/bin/python benchmarks/fuzz_receiver.py --kind pdus --minutes 10
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from pydicom.data import get_testdata_file
from pynetdicom import _config

from miemss_node.config import load_config
from miemss_node.node import Node
from tests.support.fuzzing import mutate, node_is_serving, send_raw
from tests.support.hostile import rss_bytes
from tests.support.pdus import association_sequences, play

SEEDS = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "RG1_J2KI.dcm"]

#: The node's network timeout while fuzzing: connections left open end after it.
NETWORK_TIMEOUT = 2.0


class Tally:
    """What happened, counted."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.tried = self.crashes = self.hangs = 0
        self.errors: list[str] = []
        self.rss: list[int] = []


class ErrorLog(logging.Handler):
    """Counts ERROR records of the node (our loggers) and pynetdicom's "Exception in ..." errors."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(logging.ERROR)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name.startswith("miemss_node") or "Exception in" in message:
            self.tally.errors.append(f"{record.name}: {message[:120]}")


class TimeUp(Exception):
    """The fuzzing time is over."""


def fuzz_files(node: Node, tally: Tally, deadline: float, folder: Path, seed: int, hang_seconds: float) -> None:
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
        status = send_raw(path, node.port, timeout=hang_seconds)
        tally.tried += 1
        if time.monotonic() - started >= hang_seconds:
            tally.hangs += 1
        if status == 0xC211 or not node_is_serving(node.port):
            tally.crashes += 1
        tally.outcomes["file: not sent (SCU refused)" if status is None else f"file: 0x{status & 0xFFFF:04X}"] += 1
        sample(tally)


def fuzz_pdus(node: Node, tally: Tally, deadline: float, hang_seconds: float) -> None:
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
        played = play(node.port, steps, half_close, hang_seconds=hang_seconds)
        tally.tried += 1
        if played.closed_after is None:
            tally.hangs += 1
        reply = {None: "nothing", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
                 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}.get(played.first_reply, "other")
        tally.outcomes[f"pdus: first reply {reply}"] += 1
        if tally.tried % 25 == 0 and not node_is_serving(node.port):
            tally.crashes += 1
        sample(tally)

    try:
        one()
    except TimeUp:
        pass


def sample(tally: Tally) -> None:
    if tally.tried % 50 == 0:
        tally.rss.append(rss_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kind", choices=["files", "pdus", "all"], default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the mutants' invalid values make pydicom warn on every read
    tally = Tally()
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger().addHandler(ErrorLog(tally))
    thread_errors: list[str] = []
    library_errors: Counter[str] = Counter()

    def thread_hook(hook_args: Any) -> None:
        frames = traceback.extract_tb(hook_args.exc_traceback)
        name = f"{hook_args.exc_type.__name__}: {str(hook_args.exc_value)[:80]}"
        if any("miemss_node" in frame.filename for frame in frames):
            thread_errors.append(name)
        else:  # a thread of pynetdicom died; the receiver's sweep closes what it left open
            library_errors[name] += 1

    threading.excepthook = thread_hook
    with tempfile.TemporaryDirectory() as folder:
        config_path = Path(folder) / "config.toml"
        config_path.write_text(
            "[node]\nport = 0\nstorage_dir = 'storage'\nmax_pdu = 16384\n"
            f"network_timeout_seconds = {NETWORK_TIMEOUT}\nacse_timeout_seconds = {NETWORK_TIMEOUT}\n"
            "[worker]\ncount = 0\n[logging]\nlevel = 'ERROR'\n"
        )
        node = Node(load_config(config_path, environ={}))
        node.start()
        tally.rss.append(rss_bytes())
        started = time.monotonic()
        end = started + args.minutes * 60
        try:
            if args.kind in ("pdus", "all"):
                fuzz_pdus(node, tally, end if args.kind == "pdus" else started + args.minutes * 30, args.hang_seconds)
            if args.kind in ("files", "all"):
                fuzz_files(node, tally, end, Path(folder), args.seed, args.hang_seconds)
            if not node_is_serving(node.port):
                tally.crashes += 1
        finally:
            node.stop()
    crashes = tally.crashes + len(tally.errors) + len(thread_errors)
    mb = [value / 2**20 for value in tally.rss]
    print(f"inputs tried: {tally.tried} in {args.minutes:g} min ({args.kind}); crashes: {crashes}; hangs: {tally.hangs}")
    if mb:
        warm = mb[min(2, len(mb) - 1)]
        print(f"RSS MB: start {mb[0]:.1f}, after warm-up {warm:.1f}, max {max(mb):.1f}, end {mb[-1]:.1f}")
    for outcome, count in tally.outcomes.most_common():
        print(f"  {outcome}: {count}")
    for error in (tally.errors + thread_errors)[:10]:
        print(f"  error: {error}")
    for error, count in library_errors.most_common():
        print(f"  pynetdicom thread died ({count}x): {error}")
    raise SystemExit(1 if crashes or tally.hangs else 0)


if __name__ == "__main__":
    main()
