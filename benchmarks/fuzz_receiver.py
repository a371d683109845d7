"""Fuzz the receiver for a while: truncated and bit-flipped real files, sent raw over loopback.

Counts inputs tried, crashes (0xC211 = an exception escaped our handler, or the node stopped
answering) and hangs (a C-STORE not answered within --hang-seconds).

    .venv/bin/python benchmarks/fuzz_receiver.py --minutes 10
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom.data import get_testdata_file  # noqa: E402
from pynetdicom import _config  # noqa: E402

from miemss_node.config import load_config  # noqa: E402
from miemss_node.node import Node  # noqa: E402
from tests.support.fuzzing import mutate, node_is_serving, send_raw  # noqa: E402

SEEDS = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "RG1_J2KI.dcm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    args = parser.parse_args()
    _config.STORE_SEND_CHUNKED_DATASET = True
    warnings.simplefilter("ignore")  # the mutants' invalid values make pydicom warn on every read
    logging.disable(logging.CRITICAL)  # pynetdicom logs every refused association at ERROR
    rng = random.Random(args.seed)
    seeds = [Path(get_testdata_file(name)).read_bytes() for name in SEEDS]
    outcomes: Counter[str] = Counter()
    crashes = hangs = tried = 0
    with tempfile.TemporaryDirectory() as folder:
        config_path = Path(folder) / "config.toml"
        config_path.write_text("[node]\nport = 0\nstorage_dir = 'storage'\n[worker]\ncount = 0\n")
        node = Node(load_config(config_path, environ={}))
        node.start()
        deadline = time.monotonic() + args.minutes * 60
        try:
            while time.monotonic() < deadline:
                data = rng.choice(seeds)
                cut = rng.randrange(len(data)) if rng.random() < 0.5 else None
                flips = [rng.randrange(len(data) * 8) for _ in range(rng.randint(0, 16))]
                path = Path(folder) / "mutant.dcm"
                path.write_bytes(mutate(data, cut=cut, flips=flips))
                started = time.monotonic()
                status = send_raw(path, node.port, timeout=args.hang_seconds)
                tried += 1
                if time.monotonic() - started >= args.hang_seconds:
                    hangs += 1
                if status == 0xC211 or not node_is_serving(node.port):
                    crashes += 1
                outcomes["not sent (SCU refused)" if status is None else f"0x{status & 0xFFFF:04X}"] += 1
        finally:
            node.stop()
    print(f"inputs tried: {tried} in {args.minutes:g} min; crashes: {crashes}; hangs: {hangs}")
    for outcome, count in outcomes.most_common():
        print(f"  {outcome}: {count}")
    raise SystemExit(1 if crashes or hangs else 0)


if __name__ == "__main__":
    main()
