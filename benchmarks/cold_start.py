"""Cold start: ``miemss-node --help`` and ``miemss-node process`` of one ~2k film, each in a new process.

Each command runs ``--repeat`` times in a fresh interpreter (the film stays in the page cache, as on a
node that just received it), against two baselines run in the same way and the same run: an empty
interpreter (``python -c pass``) and one that imports pydicom. The median wall time of each is printed,
with its ratio to the baselines, and, with ``--importtime``, the slowest imports of ``process``.

    .venv/bin/python benchmarks/cold_start.py [--repeat 5] [--input FILM] [--importtime]

The film is the WG04 chest CR, JPEG 2000, 1841x1955 (``../shared/data``, else pydicom-data's copy).
The issue's target for ``process`` of one 2k film is 3 s.
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

#: The default film, relative to the repository (the shared corpus).
DEFAULT_FILM = "../shared/data/dicom/xray/cr_chest_pa_philips_mono1_15bit_j2ki.dcm"

#: Target of the issue for ``process`` of one 2k film, seconds.
TARGET_PROCESS_SECONDS = 3.0


def default_film() -> Path:
    """The shared corpus's WG04 chest CR, else pydicom-data's copy of it."""
    path = (REPO / DEFAULT_FILM).resolve()
    if path.is_file():
        return path
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file("RG1_J2KI.dcm")))


def wall_seconds(command: list[str], repeat: int) -> float:
    """Median wall time of ``command`` run ``repeat`` times, each in a new process; it must succeed."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr.decode()[-2000:]}")
    return statistics.median(times)


def slowest_imports(command: list[str], count: int) -> list[tuple[float, str]]:
    """The ``count`` top-level imports with the largest cumulative time under ``python -X importtime``."""
    done = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True, check=True)
    found = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith("  "):  # a top-level import, not one nested in another
            found.append((int(cumulative) / 1e6, name.strip()))
    return sorted(found, reverse=True)[:count]


def main(argv: list[str] | None = None) -> int:
    """Time the baselines and the two commands; print the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--input", type=Path, default=None, help="the film to process (default: the WG04 chest CR)")
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports of process")
    args = parser.parse_args(argv)
    film = args.input or default_film()
    python = sys.executable
    with tempfile.TemporaryDirectory() as output:
        process = ["-m", "miemss_node", "process", "--input", str(film), "--output", output]
        rows = {
            "python -c pass": wall_seconds([python, "-c", "pass"], args.repeat),
            "python -c 'import pydicom'": wall_seconds([python, "-c", "import pydicom"], args.repeat),
            "miemss-node --help": wall_seconds([python, "-m", "miemss_node", "--help"], args.repeat),
            f"miemss-node process ({film.name})": wall_seconds([python, *process], args.repeat),
        }
        imports = slowest_imports(process, 12) if args.importtime else []
    empty, pydicom_only = rows["python -c pass"], rows["python -c 'import pydicom'"]
    print(f"median wall time of {args.repeat} runs, each in a new process:")
    for name, seconds in rows.items():
        print(f"  {name:<60} {seconds:6.2f} s   {seconds / empty:6.1f}x pass   {seconds / pydicom_only:6.1f}x import pydicom")
    processed = list(rows.values())[-1]
    verdict = "met" if processed <= TARGET_PROCESS_SECONDS else "missed"
    print(f"target for process: {TARGET_PROCESS_SECONDS:.1f} s: {verdict} ({processed:.2f} s)")
    if imports:
        print("slowest top-level imports of process (cumulative, python -X importtime):")
        for seconds, name in imports:
            print(f"  {seconds:6.2f} s  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
