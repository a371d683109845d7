"""The dashboard's thumbnails of one image: the node's PNG options against Pillow's ``optimize`` (the
baseline, the node's setting until 2026-12-03), in the same process.

A worker draws them right after it rings the sender, so on a small machine their CPU is taken from the
delivery of the results. Renders the overlay and heat-map thumbnails of the WG04 chest CR (1841x1955,
pydicom-data) ``--rounds`` times each way, alternating, and prints the medians, their ratio and the PNG
sizes.

    .venv/bin/python benchmarks/thumbnails.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from miemss_node.config import load_config  # noqa: E402
from miemss_node.encode.templates import load_templates  # noqa: E402
from miemss_node.pipeline.models import load_models  # noqa: E402
from miemss_node.pipeline.runner import analyse_dataset  # noqa: E402
from miemss_node.thumbnails import PNG_OPTIONS, render_thumbnails  # noqa: E402


def main() -> None:
    """Print the median time and the sizes of each way's thumbnails, and the ratio of the times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    config = load_config(REPO / "config.toml")
    source = dcmread(get_testdata_file("RG1_J2KI.dcm"))
    analysis = analyse_dataset(source, config.pipeline, load_models(config.models), caption=False)[0]
    template = load_templates().capture
    ways: dict[str, dict[str, object]] = {"node": PNG_OPTIONS, "optimize (baseline)": {"optimize": True}}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    sizes: dict[str, tuple[int, int]] = {}
    for _ in range(args.rounds):
        for name, options in ways.items():
            started = time.perf_counter()
            overlay, heatmap = render_thumbnails(analysis, template, options)
            seconds[name].append(time.perf_counter() - started)
            sizes[name] = (len(overlay), len(heatmap))
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    for name in ways:
        overlay_bytes, heatmap_bytes = sizes[name]
        print(
            f"{name}: {medians[name]:.3f} s; overlay {overlay_bytes / 1000:.1f} kB, heat map {heatmap_bytes / 1000:.1f} kB"
        )
    print(f"ratio node / baseline: {medians['node'] / medians['optimize (baseline)']:.2f} (medians of {args.rounds})")


if __name__ == "__main__":
    main()
