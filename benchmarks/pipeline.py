"""Pipeline benchmark: each stage's time and peak memory on a 2048x2048 radiograph.

The film is a frontal chest CR, so with the default settings it takes the chest analysis (anatomy,
lung zones against the normal reference, round densities), as in the node; ``--generic`` times the
generic patch analysis (HOG features, Isolation Forest) instead.

The WG04 chest CR (``../shared/data``, else pydicom-data's copy) is resized to 2048x2048 and stored
as an uncompressed 16-bit DICOM dataset in memory, so that decode is measured too. Each stage is
timed (median of ``--repeat`` runs, wall and CPU) and then run once more under ``tracemalloc`` for
its peak of new allocations. A baseline runs in the same process, so the ratio holds on any machine:
scikit-image's non-local means (fast mode, patch 5, distance 6) and HOG at full resolution (16x16
cells, 2x2 blocks) with an Isolation Forest on the resulting patch features: what one would write
first from the library defaults.

Run ``python benchmarks/pipeline.py``; the target for the whole classical pipeline is 3 s.
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
from miemss_node.pipeline.anomaly import score_patches  # noqa: E402
from miemss_node.pipeline.base import DecodedImage, EnhancedImage, ImageAnalysis, PipelineSettings  # noqa: E402
from miemss_node.pipeline.chest import is_frontal_chest_candidate, measure_chest  # noqa: E402
from miemss_node.pipeline.chest_reference import load_chest_reference  # noqa: E402
from miemss_node.pipeline.decode import decode_dataset, read_dicom_file  # noqa: E402
from miemss_node.pipeline.enhance import enhance  # noqa: E402
from miemss_node.pipeline.features import patch_features  # noqa: E402
from miemss_node.pipeline.modality import settings_for_image  # noqa: E402
from miemss_node.pipeline.regions import find_regions  # noqa: E402
from miemss_node.pipeline.report import findings_sentences  # noqa: E402
from miemss_node.pipeline.runner import judged_chest  # noqa: E402
from miemss_node.pipeline.score import generic_abnormality  # noqa: E402

Row = tuple[str, float, float, float]

#: Target of the issue for the whole classical pipeline, seconds.
TARGET_SECONDS = 3.0

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


def pipeline_rows(ds: Dataset, settings: PipelineSettings, repeat: int) -> list[Row]:
    """Time and memory of each stage of our pipeline: the chest analysis when the film takes it."""
    rows = []
    frames, wall, cpu, peak = measure(lambda: decode_dataset(ds), repeat)
    rows.append(("decode", wall, cpu, peak))
    image = frames[0]
    chosen = settings_for_image(settings, image)
    enhanced, wall, cpu, peak = measure(lambda: enhance(image, chosen.denoise_method), repeat)
    rows.append((f"enhance ({chosen.denoise_method})", wall, cpu, peak))
    if chosen.chest_analysis and is_frontal_chest_candidate(image):
        analysis = _chest_rows(image, enhanced, chosen, repeat, rows)
    else:
        analysis = None
    if analysis is None:
        analysis = _generic_rows(image, enhanced, chosen, repeat, rows)
    _, wall, cpu, peak = measure(lambda: findings_sentences(analysis), repeat)
    rows.append(("report", wall, cpu, peak))
    return rows


def _chest_rows(
    image: DecodedImage, enhanced: EnhancedImage, settings: PipelineSettings, repeat: int, rows: list[Row]
) -> ImageAnalysis | None:
    """The chest analysis's stages, as ``pipeline/runner.py`` runs them; None when no chest is found."""
    measured, wall, cpu, peak = measure(lambda: measure_chest(image, enhanced.pixels), repeat)
    rows.append(("anatomy", wall, cpu, peak))
    if measured is None:
        return None
    reference, wall, cpu, peak = measure(lambda: load_chest_reference(settings.chest_reference), repeat)
    rows.append(("reference", wall, cpu, peak))
    analysis, wall, cpu, peak = measure(lambda: judged_chest(image, enhanced, measured, reference, settings), repeat)
    rows.append(("regions (zones, round densities)", wall, cpu, peak))
    return analysis


def _generic_rows(
    image: DecodedImage, enhanced: EnhancedImage, settings: PipelineSettings, repeat: int, rows: list[Row]
) -> ImageAnalysis:
    """The generic analysis's stages: patch features, Isolation Forest, regions."""
    features, wall, cpu, peak = measure(lambda: patch_features(enhanced, settings), repeat)
    rows.append((f"features (grid {features.grid_shape[0]}x{features.grid_shape[1]})", wall, cpu, peak))
    scores, wall, cpu, peak = measure(lambda: score_patches(features, settings), repeat)
    rows.append(("anomaly", wall, cpu, peak))
    region_map, wall, cpu, peak = measure(lambda: find_regions(scores, features, image, settings), repeat)
    rows.append(("regions", wall, cpu, peak))
    return ImageAnalysis(
        decoded=image,
        enhanced=enhanced,
        features=features,
        scores=scores,
        region_map=region_map,
        findings=(),
        abnormality_score=generic_abnormality(scores, region_map),
    )


def baseline_rows(ds: Dataset, repeat: int) -> list[Row]:
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


def table(rows: list[Row]) -> str:
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
    parser.add_argument("--generic", action="store_true", help="the generic analysis, even on a chest film")
    args = parser.parse_args(argv)
    settings = load_config(args.config).pipeline if args.config.is_file() else PipelineSettings()
    if args.generic:
        settings = settings.replaced(chest_analysis=False)
    ds = test_dataset(args.size)
    ours = pipeline_rows(ds, settings, args.repeat)
    print(f"Classical pipeline on a {args.size}x{args.size} CR (settings from {args.config.name}, peak memory of the stage's new allocations):")
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
