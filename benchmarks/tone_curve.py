"""Do the real-film figures survive another site's tone curve? The zone file's films under power-law curves.

A hospital's films reach the node after its modality's processing: the same anatomy, another grey-scale
curve. The chest analysis measures lung density linearly between the film's darkest lung and its
mediastinum, so a curve that bends the mid-tones moves every zone. Here each film of the zone file is
passed through ``v -> lo + (hi - lo) * ((v - lo) / (hi - lo)) ** gamma`` (its own range, order kept)
before the pipeline, and ``evaluate``'s figures are printed per split for each gamma, with how much the
hemithoraces found overlap those found at the first gamma; gamma 1 (the film as stored) is the baseline,
run in the same process.

Run ``python benchmarks/tone_curve.py --data-root ../shared/data`` (about 2 minutes).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Print, per gamma and split, the figures ``evaluate`` reports on real films."""
    from miemss_node.config import load_config
    from miemss_node.evaluate.metrics import dice_iou
    from miemss_node.evaluate.real import FilmResult, _film_result, decode_film, summarise_films
    from miemss_node.evaluate.zones import load_zone_file
    from miemss_node.pipeline.runner import analyse_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--zones", type=Path, default=REPO / "benchmarks" / "zones" / "shared_chest_films.json")
    parser.add_argument("--config", type=Path, default=REPO / "config.toml")
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0, 0.8, 1.25])
    args = parser.parse_args()
    settings = load_config(args.config).pipeline
    films = load_zone_file(args.zones)
    # Decoded once: each gamma curves the same stored pixels.
    images = {film.file: decode_film(args.data_root / film.file, view=film.view) for film in films}
    baseline: dict[str, float] = {}
    outlines: dict[str, np.ndarray] = {}
    for gamma in args.gammas:
        results: list[FilmResult] = []
        overlaps: dict[str, list[float]] = {"development": [], "held-out": []}
        for film in films:
            image = images[film.file]
            curved = replace(image, pixels=_tone_curve(image.pixels, gamma))
            analysis = analyse_image(curved, settings)
            results.append(_film_result(film, curved, analysis))
            if analysis.anatomy is not None:
                lungs = analysis.anatomy.hemithoraces > 0
                first = outlines.setdefault(film.file, lungs)
                overlaps.setdefault(film.split, []).append(dice_iou(first, lungs)[1] or 0.0)
        for split in ("development", "held-out"):
            s = summarise_films([r for r in results if r.split == split])
            iou = np.asarray(overlaps.get(split) or [np.nan])
            baseline.setdefault(split, s["auc"]["auc"])
            print(
                f"gamma {gamma:g} [{split}] regions on objects or outside: {s['regions_on_objects_or_outside']}; "
                f"abnormal films with a region on the disease: {s['abnormal_with_region_on_disease']} of "
                f"{s['abnormal_films']}; disease zones: {s['disease_zones_with_a_region']} of {s['disease_zones']}; "
                f"regions per normal film: {s['regions_per_normal_film']}; AUC {s['auc']['auc']:.2f} "
                f"(AP {s.get('auc_AP', {}).get('auc', float('nan')):.2f}; x{s['auc']['auc'] / baseline[split]:.2f} "
                f"of gamma {args.gammas[0]:g}); hemithoraces' overlap (IoU) with gamma {args.gammas[0]:g}'s: "
                f"median {np.median(iou):.2f}, lowest {np.min(iou):.2f}",
                flush=True,
            )


def _tone_curve(pixels: np.ndarray, gamma: float) -> np.ndarray:
    """The film through a power-law curve over its own range, in its own data type (rounded)."""
    if gamma == 1.0:
        return pixels
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    curved = low + (high - low) * ((values - low) / max(high - low, 1e-9)) ** gamma
    return (np.rint(curved) if np.issubdtype(pixels.dtype, np.integer) else curved).astype(pixels.dtype)


if __name__ == "__main__":
    main()
