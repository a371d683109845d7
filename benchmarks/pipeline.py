"""Pipeline benchmark: time and peak memory of the analysis of a 2048x2048 chest radiograph.

The pipeline runs as the node runs it (:func:`~miemss_node.pipeline.runner.analyse_image`): on this
frontal chest film the chest analysis, and, with the chest analysis switched off, the generic analysis
other films get. The time of each stage is printed under each path. The chest CR (``../shared/data``, else pydicom-data's copy) is resized to 2048x2048 and stored
as an uncompressed 16-bit DICOM dataset in memory, so that decode is measured too. Each stage is
timed (median of ``--repeat`` runs, wall and CPU) and then run once more under ``tracemalloc`` for
its peak of new allocations. A baseline runs in the same process, so the ratio holds on any machine:
scikit-image's non-local means (fast mode, patch 5, distance 6) and HOG at full resolution (16x16
cells, 2x2 blocks) with an Isolation Forest on the resulting patch features: what one would write
first from the library defaults.

Run ``python benchmarks/pipeline.py``; the target for decode plus the chest analysis is 2.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from miemss_node.config import load_config  # noqa: E402
from miemss_node.pipeline.base import PipelineSettings  # noqa: E402
from miemss_node.pipeline.decode import decode_dataset, read_dicom_file  # noqa: E402
from miemss_node.pipeline.runner import analyse_image  # noqa: E402

#: Target for decode plus the chest analysis of a 2048x2048 film, seconds.
TARGET_SECONDS = 2.5

#: The default source image (the shared corpus), relative to the repository.
DEFAULT_IMAGE = "../shared/data/dicom/xray/cr_chest_pa_philips_mono1_15bit_uncompressed.dcm"


def test_dataset(size: int) -> Dataset:
    """The chest CR resized to ``size`` x ``size``, as an uncompressed 16-bit CR dataset."""
    from skimage.transform import resize

    path = (REPO / DEFAULT_IMAGE).resolve()
    if not path.is_file():
        from pydicom.data import get_testdata_file

        path = Path(str(get_testdata_file("RG1_UNCR.dcm")))
    ds = read_dicom_file(path)
    pixels = resize(ds.pixel_array.astype(np.float32), (size, size), order=1, preserve_range=True)
    ds.PixelData = np.clip(np.rint(pixels), 0, 2**15 - 1).astype(np.uint16).tobytes()
    ds.Rows, ds.Columns = size, size
    ds.PixelSpacing = [0.2, 0.2]  # WG04 stores 0; a real detector's spacing makes mm settings apply
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return ds


def measure(run: Callable[[], Any], repeat: int) -> tuple[Any, float, float, float]:
    """(result, median wall s, median CPU s, peak MiB of new allocations under tracemalloc)."""
    walls, cpus = [], []
    result = None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        result = run()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, statistics.median(walls), statistics.median(cpus), peak / 2**20


def pipeline_rows(ds: Dataset, settings: PipelineSettings, repeat: int) -> list[tuple[str, float, float, float]]:
    """Time and memory of decode and of the analysis as the node runs it, then its stages' seconds."""
    rows = []
    frames, wall, cpu, peak = measure(lambda: decode_dataset(ds), repeat)
    rows.append(("decode", wall, cpu, peak))
    image = frames[0]
    analysis, wall, cpu, peak = measure(lambda: analyse_image(image, settings), repeat)
    rows.append((f"analysis ({analysis.method})", wall, cpu, peak))
    stages = ", ".join(f"{name} {seconds:.3f}" for name, seconds in analysis.stage_seconds.items())
    print(f"stages of the last {analysis.method} analysis (s): {stages}")
    return rows


def baseline_rows(ds: Dataset, repeat: int) -> list[tuple[str, float, float, float]]:
    """Time and memory of the library-defaults baseline (same decoded image)."""
    from skimage.feature import hog
    from skimage.restoration import denoise_nl_means, estimate_sigma
    from sklearn.ensemble import IsolationForest

    pixels = decode_dataset(ds)[0].pixels
    rows = []

    def nl_means() -> np.ndarray:
        sigma = float(estimate_sigma(pixels))
        return denoise_nl_means(pixels, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)

    denoised, wall, cpu, peak = measure(nl_means, repeat)
    rows.append(("baseline enhance (nl-means)", wall, cpu, peak))

    def hog_features() -> np.ndarray:
        blocks = hog(denoised, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2), feature_vector=False)
        return blocks.reshape(blocks.shape[0] * blocks.shape[1], -1)

    vectors, wall, cpu, peak = measure(hog_features, repeat)
    rows.append((f"baseline features (HOG, {vectors.shape[0]}x{vectors.shape[1]})", wall, cpu, peak))
    _, wall, cpu, peak = measure(
        lambda: IsolationForest(random_state=0).fit(vectors).score_samples(vectors), repeat
    )
    rows.append(("baseline anomaly (IF)", wall, cpu, peak))
    return rows


def table(rows: list[tuple[str, float, float, float]]) -> str:
    """Rows as text, with a total."""
    lines = [f"{'stage':<36} {'wall s':>8} {'CPU s':>8} {'peak MiB':>9}"]
    lines += [f"{name:<36} {wall:8.3f} {cpu:8.3f} {peak:9.1f}" for name, wall, cpu, peak in rows]
    lines.append(
        f"{'total':<36} {sum(r[1] for r in rows):8.3f} {sum(r[2] for r in rows):8.3f} {max(r[3] for r in rows):9.1f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both pipelines and print the tables, the target check and the ratio to the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", type=Path, default=REPO / "config.toml", help="its [pipeline] is used")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    settings = load_config(args.config).pipeline if args.config.is_file() else PipelineSettings()
    ds = test_dataset(args.size)
    print(f"Generic analysis (other films) on a {args.size}x{args.size} CR (settings from {args.config.name}):")
    print(table(pipeline_rows(ds, settings.replaced(chest_analysis=False), args.repeat)))
    print("\nChest analysis (frontal chest films) on the same CR:")
    ours = pipeline_rows(ds, settings, args.repeat)
    print(table(ours))
    total = sum(r[1] for r in ours)
    print(f"target {TARGET_SECONDS:.1f} s: {'met' if total <= TARGET_SECONDS else 'missed'} ({total:.2f} s wall)")
    if not args.no_baseline:
        base = baseline_rows(ds, args.repeat)
        print("\nBaseline (scikit-image/scikit-learn defaults, same process):")
        print(table(base))
        base_total = sum(r[1] for r in base)
        print(f"ours / baseline: {total / base_total:.3f} (wall), "
              f"{sum(r[2] for r in ours) / sum(r[2] for r in base):.3f} (CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
