"""Handing an image's outcome from a pool process back to the job's process: through a file in memory
(the node's way, ``miemss_node/handover.py``) against the pool's pipe (the baseline, in the same pool).

Analyses the WG04 chest CR (1841x1955, pydicom-data) and draws its SC overlay in an image pool of two
processes, ``--rounds`` times each way, alternating: the outcome (about 61 MB of arrays) comes back as a
parcel, or pickled whole through the pipe as ``ProcessPoolExecutor`` returns any result. Prints the
medians of ``pool.analyse`` from call to outcome, and their ratio; then the same for a study of
``--images`` copies, two at a time.

    .venv/bin/python benchmarks/handover.py [--rounds 9] [--images 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom.data import get_testdata_file  # noqa: E402

from miemss_node import images  # noqa: E402
from miemss_node.config import load_config  # noqa: E402
from miemss_node.encode.templates import CaptureTemplate, load_templates  # noqa: E402


def through_the_pipe(
    executor: Executor, files: list[tuple[str, Path]], capture: CaptureTemplate
) -> list[images.ImageOutcome]:
    """The pool's ``analyse`` as it was: each outcome returned through the pipe as it is (the pool
    process's task without the handover)."""
    futures = [executor.submit(images._child_outcome, uid, path, None, capture) for uid, path in files]
    return [future.result() for future in futures]


def main() -> None:
    """Print, for one image and for a study, the median time of each way and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    film = Path(str(get_testdata_file("RG1_J2KI.dcm")))
    capture = load_templates().capture
    config = load_config(REPO / "config.toml")
    # The pool's processes log each analysis at INFO: only the figures are wanted here.
    pool = images.ImagePool(replace(config, logging=replace(config.logging, level="WARNING")), 2)
    try:
        pool.warm()
        executor = pool._started()
        for count in (1, args.images):
            files = [(f"1.2.3.{n}", film) for n in range(count)]
            ways = {
                "file in memory": lambda study: pool.analyse(study, None, capture),
                "pipe": lambda study: through_the_pipe(executor, study, capture),
            }
            seconds: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.rounds + 1):  # the first round of each warms the processes' caches
                for name, way in ways.items():
                    start = time.perf_counter()
                    outcomes = way(files)
                    seconds[name].append(time.perf_counter() - start)
                    assert all(o.skipped is None and o.overlays for o in outcomes)
            medians = {name: statistics.median(times[1:]) for name, times in seconds.items()}
            print(
                f"{count} image(s), analysed and drawn in the pool: file in memory {medians['file in memory']:.3f} s, "
                f"pipe {medians['pipe']:.3f} s (medians of {args.rounds}); "
                f"ratio {medians['file in memory'] / medians['pipe']:.2f}"
            )
    finally:
        pool.close()


if __name__ == "__main__":
    main()
