"""How far can faint nodules be ranked with today's candidates? Challengers to the shipped focal model.

Nodules (10-30 mm, contrast 0.06 and 0.12, two per copy) are inserted into the drawn lungs' interiors
(``ZoneMasks.lung_interiors``) of the zone file's normal films, as ``evaluate --insert-nodules`` inserts
them, and each copy is measured as the node measures it. A candidate **hits** a nodule when its place or
its outline's middle lies on the nodule. Per split, the candidates of the clean film and of its copies are
pooled and the sensitivity at 0.5, 1 and 2 false candidates per film run is given (each run keeps its 8
best candidates, as the evaluation keeps 8 round densities) for:

* **shipped**: the reference's focal evidence (the baseline, run in the same process);
* **film-centred**: the focal model's log-odds minus the median of its film's candidates (does a film
  with much blobby texture, which gives most false positives, hide the nodules of the others?);
* **ceiling**: a logistic regression over *every* measurement (``focal.FEATURE_NAMES``) trained on the
  copies of the other development normal films of this very set, one film left out at a time: what
  the measurements could give with in-site training (not shippable: these films are research-only);
  the same for the shipped model's five measurements, and for those five with the Hotelling statistic
  (below) at each candidate: does that measurement add what the five lack?
* **shipped regime**: the same two sets of measurements, trained as the shipped model is (the
  reference's films, nodules inserted by ``focal_model.training_copies``, the same regression): does the
  lead hold without in-site training?
* **Hotelling**: a different measurement altogether, the channelized Hotelling observer of
  signal-detection research (Laguerre-Gauss channels per nodule radius, the background's channel
  covariance from the reference's normal films, the template that whitens it), its statistic
  normalised by its local spread as the blob detector's is, peaks as candidates, ranked by it alone.
  Its share is compared with the blob detector's strength alone.
* **other candidate maps**: is a better map the missing measurement? The strongest peaks of four more
  blob maps at the detector's radii, ranked by the map alone, as the Hotelling statistic is: the
  Laplacian of Gaussian over the lungs' spread (not its local spread, as the detector's), the determinant
  of the Hessian where both curvatures say "bright blob", and the Hessian's smaller eigenvalue there (a
  ridge such as a rib or a vessel has one curvature near 0, so only a blob answers); and contralateral
  subtraction, since ribs and vessels come in left-right pairs and a nodule does not: the film's
  band-passed detail minus its mirror image across the midline, each place matched to the mirror's best
  fitting shift (within 8 mm, over a 30 mm window), then the detector's Laplacian of Gaussian over its
  local spread.

Run ``python benchmarks/focal_ceiling.py --data-root ../shared/data`` (about 5 minutes).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONTRASTS = (0.06, 0.12)
FP_RATES = (0.5, 1.0, 2.0)
#: Candidates kept per film run (``evaluate.froc.CANDIDATE_FOCAL_REGIONS``).
KEPT = 8
#: Hotelling: nodule radii (mm), channels per radius, channel width per radius.
HOTELLING_RADII_MM = (5.0, 7.0, 10.0, 14.0)
HOTELLING_CHANNELS = 6
HOTELLING_WIDTH = 1.6
#: The other candidate maps, by key.
BLOB_MAPS = {
    "log_lungs": "LoG over the lungs' spread alone",
    "hessian_determinant": "determinant of the Hessian alone",
    "hessian_smaller": "smaller Hessian eigenvalue alone",
    "contralateral": "contralateral subtraction alone",
}
#: Contralateral subtraction: the band-pass (background removed at this scale), the window over which a
#: place is matched to the mirror image, and how far the match may shift.
CONTRALATERAL_BACKGROUND_MM = 12.0
CONTRALATERAL_WINDOW_MM = 30.0
CONTRALATERAL_SEARCH_MM = 8.0


@dataclass
class Run:
    """One film run: its nodules and, per candidate, the nodule it hits (0: none) and its measures."""

    film: str
    split: str
    contrast: float
    nodules: int
    hits: list[int]
    values: dict[str, np.ndarray]


def main() -> None:
    """Print sensitivity at 0.5, 1 and 2 false candidates per film run, per split, contrast and ranking."""
    args = insertion_arguments(__doc__.splitlines()[0]).parse_args()
    from miemss_node.config import load_config

    settings = load_config(args.config).pipeline
    hotelling = _HotellingObserver(settings, args.data_root)
    runs, hotelling_runs, map_runs = _measure(args, settings, hotelling)
    _ceiling(runs)
    _shipped_regime(runs, hotelling)
    for split in ("development", "held-out"):
        print(f"[{split}] sensitivity at {'/'.join(f'{r:g}' for r in FP_RATES)} false candidates per film run")
        rankings: dict[str, tuple[list[Run], str]] = {
            "shipped focal evidence (baseline)": (runs, "evidence"),
            "film-centred log-odds": (runs, "centred"),
            "ceiling: every measurement, in-site, film left out": (runs, "ceiling"),
            "the shipped five measurements, in-site, film left out": (runs, "five"),
            "the same five + Hotelling statistic, in-site": (runs, "five_hotelling"),
            "shipped regime: the five, refitted": (runs, "regime_five"),
            "shipped regime: the five + Hotelling statistic": (runs, "regime_five_hotelling"),
            "blob detector's strength alone": (runs, "strength"),
            "Hotelling statistic alone": (hotelling_runs, "hotelling"),
            **{title: (map_runs[key], key) for key, title in BLOB_MAPS.items()},
        }
        baseline: dict[float, float] = {}
        for title, (group, key) in rankings.items():
            if key in ("ceiling", "five", "five_hotelling") and split != "development":  # trained on development
                continue
            cells = []
            for contrast in CONTRASTS:
                shares = sensitivities([r for r in group if r.split == split and r.contrast in (0.0, contrast)], key)
                baseline.setdefault(contrast, shares[1])
                ratio = shares[1] / baseline[contrast] if baseline[contrast] else float("nan")
                cells.append(f"{contrast:g}: {'/'.join(f'{s:.2f}' for s in shares)} (x{ratio:.2f} at 1)")
            print(f"  {title:52s} " + "   ".join(cells))
        coverage = [_with_a_candidate([r for r in runs if r.split == split and r.contrast == c]) for c in CONTRASTS]
        print(
            "  nodules with a blob candidate on them at all: "
            + ", ".join(f"{c:g}: {found} of {total}" for c, (found, total) in zip(CONTRASTS, coverage, strict=True))
        )


def insertion_arguments(description: str) -> argparse.ArgumentParser:
    """The command line of a nodule-insertion benchmark: data root, zone file, config and copies per film."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--zones", type=Path, default=REPO / "benchmarks" / "zones" / "shared_chest_films.json")
    parser.add_argument("--config", type=Path, default=REPO / "config.toml")
    parser.add_argument("--trials", type=int, default=6, help="copies per film and contrast")
    return parser


def _measure(
    args: argparse.Namespace, settings: object, hotelling: _HotellingObserver
) -> tuple[list[Run], list[Run], dict[str, list[Run]]]:
    from miemss_node.pipeline.chest import midline_column
    from miemss_node.pipeline.chest_reference import focal_evidence, load_chest_reference, measure_for_reference

    reference = load_chest_reference(settings.chest_reference)  # type: ignore[attr-defined]
    model = reference.focal_model
    if model is None:
        raise SystemExit("the chest reference has no focal model")
    runs, hotelling_runs = [], []
    map_runs: dict[str, list[Run]] = {key: [] for key in BLOB_MAPS}
    for film, image, lungs, spacing, rng in normal_films(args.data_root, args.zones):
        copies = nodule_copies(image.pixels, lungs, spacing, rng, args.trials)
        for contrast, pixels, labels in copies:
            nodules = len(np.unique(labels)) - 1
            copy = replace(image, pixels=pixels)
            measured, enhanced = measure_for_reference(copy, settings)  # type: ignore[arg-type]
            if measured is None:
                continue
            scale = (labels.shape[0] / measured.detail_shape[0], labels.shape[1] / measured.detail_shape[1])
            hits = candidate_hits(measured.candidates, labels, scale)
            log_odds = np.array([model.log_odds(c) for c in measured.candidates])
            values = {
                "evidence": np.array([focal_evidence(c, reference) for c in measured.candidates]),
                "centred": log_odds - (np.median(log_odds) if log_odds.size else 0.0),
                "strength": np.array([c.strength for c in measured.candidates]),
                "features": np.array([c.features for c in measured.candidates]),
                "shipped_features": _shipped_measurements(measured.candidates),
            }
            runs.append(Run(film.file, film.split, contrast, nodules, hits, values))
            detail, mm, allowed = hotelling.prepared(copy, enhanced, measured)
            best = hotelling.statistic(detail, mm, allowed)
            at_candidates = [float(best[int(c.row), int(c.col)]) for c in measured.candidates]
            values["with_hotelling"] = np.column_stack([values["shipped_features"], at_candidates])
            hotelling_runs.append(_peak_run(runs[-1], "hotelling", best, labels, scale, allowed, mm))
            midline = midline_column(measured.anatomy, int(detail.shape[1]))
            for key, value in blob_maps(detail, mm, allowed, midline).items():
                map_runs[key].append(_peak_run(runs[-1], key, value, labels, scale, allowed, mm))
        print(f"  {film.file}: {len(copies)} runs", flush=True)
    return runs, hotelling_runs, map_runs


def normal_films(data_root: Path, zones: Path) -> Iterator[tuple[Any, Any, np.ndarray, float, np.random.Generator]]:
    """Each normal film of a zone file, decoded: (film, image, its drawn lungs' interiors at its size, mm per
    pixel, the random generator of its copies)."""
    from miemss_node.evaluate.real import decode_film
    from miemss_node.evaluate.zones import load_zone_file, zone_masks
    from miemss_node.pipeline.chest import ASSUMED_FIELD_MM, mm_per_pixel

    for index, film in enumerate(f for f in load_zone_file(zones) if f.status == "normal"):
        image = decode_film(data_root / film.file, view=film.view)
        shape = (int(image.pixels.shape[0]), int(image.pixels.shape[1]))
        lungs = zone_masks(film, shape, mm_per_pixel(image, shape[0])).lung_interiors
        spacing = min(image.pixel_spacing_mm) if image.pixel_spacing_mm else ASSUMED_FIELD_MM / max(shape)
        yield film, image, lungs, spacing, np.random.default_rng([7, index])


def nodule_copies(
    pixels: np.ndarray, lungs: np.ndarray, spacing: float, rng: np.random.Generator, trials: int
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """The film itself, then ``trials`` copies per contrast of :data:`CONTRASTS` with two 10-30 mm nodules
    in ``lungs``, as ``evaluate --insert-nodules`` inserts them: (contrast, pixels, nodule labels)."""
    from miemss_node.evaluate.lesions import insert_lesions

    copies = [(0.0, pixels, np.zeros(pixels.shape, dtype=np.uint16))]
    for contrast in CONTRASTS:
        for _ in range(trials):
            inserted, labels, _ = insert_lesions(
                pixels, lungs, spacing, kind="nodule", contrast=contrast, count=2, diameter_range_mm=(10.0, 30.0), rng=rng
            )
            copies.append((contrast, inserted, labels))
    return copies


def candidate_hits(candidates: Sequence[Any], labels: np.ndarray, scale: tuple[float, float]) -> list[int]:
    """Per candidate, the nodule it hits (its place or its outline's middle on the nodule; 0: none);
    ``scale`` takes detail pixels to the labels' pixels."""
    hits = []
    for c in candidates:
        row, col, _ = c.outline or (c.row, c.col, c.radius_px)
        hits.append(label_at(labels, scale, (c.row, c.col)) or label_at(labels, scale, (row, col)))
    return hits


def _shipped_measurements(candidates: Sequence[object]) -> np.ndarray:
    """The five measurements the shipped focal model reads, one row per candidate."""
    from miemss_node.pipeline.focal_model import MODEL_FEATURES, _columns

    return np.array([_columns(c.features, MODEL_FEATURES) for c in candidates])  # type: ignore[attr-defined]


def label_at(labels: np.ndarray, scale: tuple[float, float], point: tuple[float, float]) -> int:
    """The label under a point of the detail image (``scale``: detail pixels to the labels' pixels)."""
    rows, cols = labels.shape
    return int(labels[min(int(point[0] * scale[0]), rows - 1), min(int(point[1] * scale[1]), cols - 1)])


def _ceiling(runs: list[Run]) -> None:
    """Add in-site values to the development runs: models fitted on the other development films, over
    every measurement ("ceiling"), the shipped model's five ("in-site five") and those five with the
    Hotelling statistic at the candidate ("in-site five + Hotelling")."""
    for source, key in (("features", "ceiling"), ("shipped_features", "five"), ("with_hotelling", "five_hotelling")):
        _in_site(runs, source, key)


def _in_site(runs: list[Run], source: str, key: str) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    development = [r for r in runs if r.split == "development" and len(r.hits)]
    for film in sorted({r.film for r in development}):
        training = [r for r in development if r.film != film]
        x = np.concatenate([r.values[source] for r in training])
        y = np.concatenate([np.array(r.hits) > 0 for r in training])
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(C=0.3, max_iter=2000).fit(scaler.transform(x), y)
        for run in development:
            if run.film == film:
                run.values[key] = model.decision_function(scaler.transform(run.values[source]))


def _shipped_regime(runs: list[Run], hotelling: _HotellingObserver) -> None:
    """Add "regime_five" and "regime_five_hotelling" values: models fitted as the shipped one is."""
    from sklearn.linear_model import LogisticRegression

    from miemss_node.pipeline.focal_model import REGULARISATION_C

    for source, key in (("shipped_features", "regime_five"), ("with_hotelling", "regime_five_hotelling")):
        x = np.concatenate([rows[source] for rows in hotelling.training])
        y = np.concatenate([rows["labels"] for rows in hotelling.training])
        mean, scale = x.mean(axis=0), np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
        model = LogisticRegression(C=REGULARISATION_C, class_weight="balanced", max_iter=5000).fit(
            (x - mean) / scale, y
        )
        for run in runs:
            run.values[key] = model.decision_function((run.values[source] - mean) / scale)


def _with_a_candidate(group: Sequence[Run]) -> tuple[int, int]:
    """(nodules some candidate lies on, nodules inserted) over a group of film runs."""
    return sum(len({hit for hit in run.hits if hit}) for run in group), sum(run.nodules for run in group)


def sensitivities(group: Sequence[Run], key: str) -> list[float]:
    """Share of the nodules hit above the threshold allowing each of :data:`FP_RATES` per run: the threshold
    rule of ``evaluate.froc.froc_summary``, which cannot be called here since it takes -1 for "no hit" and
    these scores (log-odds) may be negative."""
    scored, false = [], []
    for run in group:
        values = run.values.get(key, np.zeros(0))
        best = dict.fromkeys(range(1, run.nodules + 1), -np.inf)
        for i in np.argsort(-values)[:KEPT]:
            if run.hits[i]:
                best[run.hits[i]] = max(best[run.hits[i]], float(values[i]))
            else:
                false.append(float(values[i]))
        scored += list(best.values())
    ordered, found = np.sort(false)[::-1], np.array(scored)
    shares = []
    for rate in FP_RATES:
        allowed = int(np.floor(rate * len(group)))
        cut = ordered[allowed] if allowed < ordered.size else -np.inf
        shares.append(float((found > cut).mean()) if found.size else 0.0)
    return shares


def _peak_run(
    run: Run,
    key: str,
    value: np.ndarray,
    labels: np.ndarray,
    scale: tuple[float, float],
    allowed: np.ndarray,
    mm: float,
) -> Run:
    """The same film run with the strongest peaks of a map as its candidates, ranked by the map (``key``)."""
    peaks = strongest_peaks(value, allowed, mm)
    hits = [label_at(labels, scale, (r, c)) for r, c, _ in peaks]
    return replace(run, hits=hits, values={key: np.array([v for _, _, v in peaks])})


def strongest_peaks(value: np.ndarray, allowed: np.ndarray, mm: float) -> list[tuple[int, int, float]]:
    """The strongest peaks of a map in the lungs, as many and as far apart as the blob detector's
    candidates: (row, col, value)."""
    from skimage.feature import peak_local_max

    from miemss_node.pipeline.focal import MAX_CANDIDATES, MIN_SEPARATION_MM

    if not allowed.any():
        return []
    floor = float(value[allowed].min()) - 1.0
    found = peak_local_max(
        np.where(allowed, value, floor), min_distance=max(1, round(MIN_SEPARATION_MM / mm)), num_peaks=MAX_CANDIDATES
    )
    return [(int(r), int(c), float(value[r, c])) for r, c in found if allowed[r, c]]


def blob_maps(detail: np.ndarray, mm: float, allowed: np.ndarray, midline: float) -> dict[str, np.ndarray]:
    """The maps of :data:`BLOB_MAPS` over a detail image, each the largest over the blob detector's radii:
    over its robust spread in ``allowed``, the contralateral one over its local spread, as the detector's;
    ``midline`` is a column of the detail image."""
    from scipy import ndimage

    from miemss_node.pipeline.focal import RADII_MM, _normalised, scale_responses

    per_key: dict[str, list[np.ndarray]] = {key: [] for key in BLOB_MAPS}
    for radius_mm, log in zip(RADII_MM, scale_responses(detail, mm), strict=True):
        sigma = radius_mm / np.sqrt(2.0) / mm
        d_rr = ndimage.gaussian_filter(detail, sigma, order=(2, 0))
        d_cc = ndimage.gaussian_filter(detail, sigma, order=(0, 2))
        d_rc = ndimage.gaussian_filter(detail, sigma, order=(1, 1))
        half_gap = np.sqrt(d_rc**2 + ((d_rr - d_cc) / 2.0) ** 2)
        # Eigenvalues, larger first; a bright blob has both negative.
        larger, smaller = (d_rr + d_cc) / 2.0 + half_gap, (d_rr + d_cc) / 2.0 - half_gap
        blob = larger < 0
        maps = {
            "log_lungs": log,
            "hessian_determinant": np.where(blob, larger * smaller, 0.0) * sigma**4,
            "hessian_smaller": np.where(blob, -larger, 0.0) * sigma**2,
        }
        for key, value in maps.items():
            # Over the lungs' robust spread (the second of the detector's two normalisations).
            per_key[key].append(_normalised(value.astype(np.float32), allowed, sigma)[1])
    difference = contralateral_difference(detail, mm, midline)
    for radius_mm, response in zip(RADII_MM, scale_responses(difference, mm), strict=True):
        per_key["contralateral"].append(_normalised(response, allowed, radius_mm / np.sqrt(2.0) / mm)[0])
    return {key: np.max(np.stack(maps), axis=0) for key, maps in per_key.items()}


def contralateral_difference(detail: np.ndarray, mm: float, midline: float) -> np.ndarray:
    """The band-passed detail minus its mirror image across ``midline`` (a column), each place matched to
    the shift of the mirror image that fits its surroundings best."""
    from scipy import ndimage

    image = detail.astype(np.float32)
    band = image - ndimage.gaussian_filter(image, CONTRALATERAL_BACKGROUND_MM / mm)
    columns = np.clip(np.rint(2 * midline - np.arange(band.shape[1])).astype(int), 0, band.shape[1] - 1)
    mirror = band[:, columns]
    window, search = max(3, round(CONTRALATERAL_WINDOW_MM / mm)), round(CONTRALATERAL_SEARCH_MM / mm)
    best_misfit = np.full(band.shape, np.inf, dtype=np.float32)
    matched = np.zeros_like(band)
    for dr in range(-search, search + 1):
        for dc in range(-search, search + 1):
            shifted = np.roll(mirror, (dr, dc), axis=(0, 1))
            misfit = ndimage.uniform_filter((band - shifted) ** 2, window)
            better = misfit < best_misfit
            best_misfit[better], matched[better] = misfit[better], shifted[better]
    return band - matched


class _HotellingObserver:
    """A channelized Hotelling observer per nodule radius, its background from the reference's films."""

    def __init__(self, settings: object, data_root: Path) -> None:
        from miemss_node.evaluate.real import decode_film
        from miemss_node.pipeline.chest_reference import load_chest_reference, measure_for_reference

        samples: list[list[np.ndarray]] = [[] for _ in HOTELLING_RADII_MM]
        films = []
        for film in load_chest_reference(settings.chest_reference).films:  # type: ignore[attr-defined]
            path = next(data_root.rglob(film["file"]), None)
            if path is None:
                raise SystemExit(f"{film['file']} (a reference film) is not under {data_root}")
            image = decode_film(path, view="PA")
            measured, enhanced = measure_for_reference(image, settings)  # type: ignore[arg-type]
            if measured is None:
                continue
            films.append((image, measured, enhanced))
            detail, mm, allowed = self.prepared(image, enhanced, measured)
            for index, channels in enumerate(self._channels(detail, mm)):
                vectors = channels.reshape(-1, HOTELLING_CHANNELS)[np.flatnonzero(allowed.ravel())[::3]]
                samples[index].append(vectors - vectors.mean(axis=0))
        self.covariances = [np.cov(np.concatenate(s).T) + 1e-6 * np.eye(HOTELLING_CHANNELS) for s in samples]
        #: Per reference film and copy: the candidates' five measurements, with the statistic, and labels.
        self.training: list[dict[str, np.ndarray]] = []
        for seed, (image, measured, enhanced) in enumerate(films):
            self._training_copies(image, measured, enhanced, seed)

    def _training_copies(self, image: object, measured: object, enhanced: np.ndarray, seed: int) -> None:
        """Measure the film and its copies with nodules, as ``chest_reference.inserted_candidates`` does."""
        from miemss_node.pipeline.chest import ASSUMED_FIELD_MM, measure_chest
        from miemss_node.pipeline.chest_reference import insertion_placement
        from miemss_node.pipeline.focal_model import training_copies

        rows, cols = enhanced.shape
        placement = insertion_placement(measured, (rows, cols))  # type: ignore[arg-type]
        spacing = image.pixel_spacing_mm  # type: ignore[attr-defined]
        spacing = min(spacing) if spacing else ASSUMED_FIELD_MM / max(rows, cols)
        copies = [(enhanced, np.zeros(enhanced.shape, dtype=np.uint16))]
        for pixels, labels in [*copies, *training_copies(enhanced, placement, spacing, seed)]:
            again = measure_chest(image, pixels)  # type: ignore[arg-type]
            if again is None:
                continue
            best = self.statistic(*self.prepared(image, pixels, again))
            scale = (rows / again.detail_shape[0], cols / again.detail_shape[1])
            five = _shipped_measurements(again.candidates)
            at = [float(best[int(c.row), int(c.col)]) for c in again.candidates]
            self.training.append(
                {
                    "shipped_features": five,
                    "with_hotelling": np.column_stack([five, at]),
                    "labels": np.array([label_at(labels, scale, (c.row, c.col)) > 0 for c in again.candidates]),
                }
            )

    def statistic(self, detail: np.ndarray, mm: float, allowed: np.ndarray) -> np.ndarray:
        """The locally normalised statistic at every pixel of a detail image (:meth:`prepared`; the best
        radius)."""
        from miemss_node.pipeline.focal import _normalised

        best = np.full(detail.shape, -np.inf, dtype=np.float32)
        for radius_mm, covariance, channels in zip(
            HOTELLING_RADII_MM, self.covariances, self._channels(detail, mm), strict=True
        ):
            template = np.linalg.solve(covariance, self._signal(radius_mm, mm))
            vectors = channels.reshape(-1, HOTELLING_CHANNELS)
            vectors = vectors - vectors[allowed.ravel()].mean(axis=0)
            statistic = (vectors @ template).reshape(detail.shape).astype(np.float32)
            local, _ = _normalised(statistic, allowed, radius_mm / np.sqrt(2.0) / mm)
            best = np.maximum(best, local)
        return best

    @staticmethod
    def prepared(image: object, enhanced: np.ndarray, measured: object) -> tuple[np.ndarray, float, np.ndarray]:
        """The detail image of a measured film, its mm per pixel, and where the blob detector looks."""
        from scipy import ndimage

        from miemss_node.pipeline.chest import DETAIL_SIDE, _resize_mask, mm_per_pixel
        from miemss_node.pipeline.features import to_working
        from miemss_node.pipeline.field_of_view import field_mask
        from miemss_node.pipeline.focal import EDGE_MARGIN_MM
        from miemss_node.pipeline.objects import find_objects

        detail = np.asarray(to_working(enhanced, DETAIL_SIDE), dtype=np.float32)
        mm = mm_per_pixel(image, detail.shape[0])  # type: ignore[arg-type]
        body = field_mask(detail)
        objects = find_objects(detail, body, mm)
        lungs = _resize_mask(measured.anatomy.hemithoraces > 0, detail.shape)  # type: ignore[attr-defined]
        # Where the blob detector looks (``focal.focal_candidates``): inside the lungs, off their edges and objects.
        allowed = ndimage.binary_erosion(lungs, iterations=max(1, round(EDGE_MARGIN_MM / mm))) & ~objects.mask & body
        return detail, mm, allowed

    @staticmethod
    def _kernels(radius_px: float) -> list[np.ndarray]:
        from scipy.special import eval_laguerre

        width = HOTELLING_WIDTH * radius_px
        half = int(np.ceil(2.5 * width))
        rows, cols = np.mgrid[-half : half + 1, -half : half + 1]
        r2 = (rows * rows + cols * cols).astype(np.float64)
        gauss = np.exp(-np.pi * r2 / width**2)
        return [gauss * eval_laguerre(j, 2 * np.pi * r2 / width**2) for j in range(HOTELLING_CHANNELS)]

    def _channels(self, detail: np.ndarray, mm: float) -> list[np.ndarray]:
        from scipy.signal import fftconvolve

        out = []
        for radius_mm in HOTELLING_RADII_MM:
            kernels = self._kernels(radius_mm / mm)
            pad = kernels[0].shape[0] // 2
            padded = np.pad(detail, pad, mode="reflect")
            out.append(np.stack([fftconvolve(padded, k, mode="valid") for k in kernels], axis=-1).astype(np.float32))
        return out

    def _signal(self, radius_mm: float, mm: float) -> np.ndarray:
        """The channels' response to an inserted nodule of unit contrast at its middle."""
        from scipy import ndimage

        from miemss_node.evaluate.lesions import SYSTEM_BLUR_MM, lesion_profile

        radius_px = radius_mm / mm
        profile, _ = lesion_profile("nodule", radius_px, np.random.default_rng(0))
        profile = ndimage.gaussian_filter(profile, SYSTEM_BLUR_MM / mm)
        response = []
        for kernel in self._kernels(radius_px):
            hk, hp = kernel.shape[0] // 2, profile.shape[0] // 2
            h = min(hk, hp)
            response.append(
                float(
                    (
                        kernel[hk - h : hk + h + 1, hk - h : hk + h + 1]
                        * profile[hp - h : hp + h + 1, hp - h : hp + h + 1]
                    ).sum()
                )
            )
        return np.array(response)


if __name__ == "__main__":
    main()
