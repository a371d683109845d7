"""The normal reference of the chest analysis: what lung zones and round densities look like on normal
frontal chest films, and how far a new film is from that.

A reference is a small JSON file: for every zone feature (:func:`~miemss_node.pipeline.zones.zone_features`)
the mean and standard deviation over normal films, the strength of round-density candidates that normal
films reach, and the provenance of every film it was built from. ``miemss-node reference chest DIR
--output FILE`` builds one from a hospital's own normal films; the node ships one built from the public
normal films whose licence allows it (``miemss_node/data/chest_reference.json``, provenance inside).

Zone statistics depend on how the lungs were outlined, so a reference records the anatomy method its
films were measured with (``anatomy``: "classical", or the anatomy model's name and weights hash; a file
without the key predates the anatomy model and was measured with the classical estimate). A frame
whose anatomy came from another method is still judged, but its report and SR say that the comparison
is not like with like, and the log warns (:func:`reference_anatomy_notes`): rebuild the reference
with the same ``[models] anatomy`` to remove it. Refusing such a pair at ``check-config`` would make
the anatomy model unusable until a hospital has its own normal films.

Evidence is in units of standard deviations ("z"), and :data:`FLAG_EVIDENCE` is where a finding is
flagged. A reference of a few films has poorly known spreads, so each spread is floored at what normal
anatomy varies by at the least (:data:`DENSITY_SPREAD_FLOOR`, :data:`ASYMMETRY_SPREAD_FLOOR`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from miemss_node.errors import ModelError
from miemss_node.pipeline.base import Anatomy, DecodedImage, ModelRun, PipelineSettings
from miemss_node.pipeline.focal import FocalCandidate
from miemss_node.pipeline.focal_model import TRAINING_NODULES, FocalModel, fit_focal_model, training_copies
from miemss_node.pipeline.zones import PERCENTILES, SIDES, ZONE_NAMES, ZONES, ZoneKey, feature_names

if TYPE_CHECKING:
    from miemss_node.pipeline.chest import ChestMeasurements
    from miemss_node.pipeline.xrv_models import AnatomySegmenter

logger = logging.getLogger(__name__)

#: Evidence (z) at which a zone or a round density is flagged; the abnormality score is 0.5 there.
FLAG_EVIDENCE = 2.5
#: Evidence per unit of the abnormality score's logistic slope (score = 1 / (1 + exp(-(e - 2.5) / 1))).
SCORE_SLOPE = 1.0
#: Smallest spread (normalised density units) assumed for a zone's density on normal films.
DENSITY_SPREAD_FLOOR = 0.08
#: Smallest spread assumed for a zone's left-right difference on normal films.
ASYMMETRY_SPREAD_FLOOR = 0.06
#: Round-density candidates stronger than the reference's threshold are flagged; the threshold is set
#: so that the normal films it was built from had this many such candidates per film.
FOCAL_FLAGS_PER_NORMAL_FILM = 0.15
#: The threshold is raised by this factor: a reference of a few films has seen only the strongest blobs
#: of those films, and normal films have stronger ones now and then.
FOCAL_MARGIN = 1.15
#: The file layout; another is refused.
FORMAT = "miemss-chest-reference"
VERSION = 1
#: The reference shipped with the package.
DEFAULT_RESOURCE = "chest_reference.json"


@dataclass(frozen=True, kw_only=True)
class ChestReference:
    """Zone statistics and round-density strengths of normal frontal chest films."""

    name: str
    #: First 12 hex digits of the file's SHA-256 ("unsaved" before it is written).
    revision: str
    means: dict[str, float]
    spreads: dict[str, float]
    #: A round density this strong (against its surroundings) is at :data:`FLAG_EVIDENCE` ...
    focal_threshold: float
    #: ... and so is one this strong against the lungs' typical spread.
    focal_global_threshold: float
    n_films: int
    #: Where each film came from: name, source, licence (as given when fitting).
    films: tuple[dict[str, str], ...] = ()
    created: str = ""
    #: The learned focal model; None: round densities are judged by strength alone.
    focal_model: FocalModel | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The anatomy method the films were measured with ("classical" or a model, as ``Anatomy.method``).
    anatomy: str = "classical"

    @property
    def model_run(self) -> ModelRun:
        """How the report and the SR name this reference."""
        return ModelRun(
            role="reference",
            name=self.name,
            revision=self.revision,
            parameters=(
                f"normal chest reference of {self.n_films} film(s): lung zone densities and round densities, "
                f"anatomy {self.anatomy}"
            ),
        )


def reference_anatomy_notes(reference: ChestReference, anatomy: Anatomy, image: DecodedImage) -> tuple[str, ...]:
    """A sentence (and a warning in the log) when a frame's anatomy method differs from the reference's."""
    if anatomy.method == reference.anatomy:
        return ()
    logger.warning(
        "anatomy %s differs from the chest reference's (%s): rebuild it with `miemss-node reference chest`",
        anatomy.method,
        reference.anatomy,
        extra={"action": "reference.anatomy_mismatch", "sop_instance_uid": image.sop_instance_uid},
    )
    return (
        f"Caution: the lungs were outlined by {anatomy.method}, but the normal reference was measured with "
        f"anatomy {reference.anatomy}; zone comparisons are approximate until the reference is rebuilt with the same "
        "anatomy model.",
    )


@dataclass(frozen=True, kw_only=True)
class ZoneEvidence:
    """How far one zone is from normal."""

    #: Denser than the same zone on normal films, in z.
    density: float
    #: Denser than its mirror zone, beyond normal left-right differences, in z (0 for the lighter side).
    asymmetry: float

    @property
    def evidence(self) -> float:
        """The larger of the two."""
        return max(self.density, self.asymmetry)


def abnormality(evidence: float) -> float:
    """Map evidence (z) to a score in [0, 1]: 0.5 at :data:`FLAG_EVIDENCE`, rising with the evidence."""
    if not math.isfinite(evidence):
        return 0.0
    return float(1.0 / (1.0 + math.exp(-(evidence - FLAG_EVIDENCE) / SCORE_SLOPE)))


def evidence_at(score: float) -> float:
    """The evidence whose abnormality score is ``score`` (the inverse of :func:`abnormality`)."""
    score = min(max(score, 1e-6), 1.0 - 1e-6)
    return FLAG_EVIDENCE + SCORE_SLOPE * math.log(score / (1.0 - score))


def zone_evidence(features: dict[str, float], reference: ChestReference) -> dict[ZoneKey, ZoneEvidence]:
    """The evidence of every zone of a film against a reference (NaN features give 0)."""
    evidence = {}
    for key in ZONES:
        density = [
            _z(features.get(f"{key.name}.p{p}", math.nan), reference, f"{key.name}.p{p}", DENSITY_SPREAD_FLOOR)
            for p in PERCENTILES
        ]
        sign = 1.0 if key.side == SIDES[0] else -1.0
        asymmetry = [
            sign * _z(features.get(f"{key.zone}.p{p}.asym", math.nan), reference, f"{key.zone}.p{p}.asym", ASYMMETRY_SPREAD_FLOOR)
            for p in PERCENTILES
        ]
        evidence[key] = ZoneEvidence(density=float(np.mean(density)), asymmetry=max(0.0, float(np.mean(asymmetry))))
    return evidence


def focal_evidence(candidate: FocalCandidate, reference: ChestReference) -> float:
    """Evidence of a round-density candidate, :data:`FLAG_EVIDENCE` at the reference's threshold.

    Its strength: the larger of its strengths over the reference's thresholds. With a focal model, its
    log-odds above the model's threshold (one unit of log-odds per unit of evidence), unless its strength
    alone is flagged: a blob stronger than any of the normal films' is flagged whatever its shape says
    (the model, learned on faint inserted nodules, reads shape and place, not how dense a mass is).
    """
    strength = FLAG_EVIDENCE * max(
        candidate.strength / max(reference.focal_threshold, 1e-6),
        candidate.global_strength / max(reference.focal_global_threshold, 1e-6),
    )
    if reference.focal_model is None:
        return strength
    model = reference.focal_model
    learned = FLAG_EVIDENCE + SCORE_SLOPE * (model.log_odds(candidate) - model.threshold)
    return max(learned, strength) if strength >= FLAG_EVIDENCE else learned


def fit_chest_reference(
    feature_rows: Sequence[dict[str, float]],
    focal_strengths: Sequence[Sequence[tuple[float, float]]],
    *,
    name: str,
    films: Sequence[dict[str, str]] = (),
    anatomy: str = "classical",
) -> ChestReference:
    """Build a reference from the measurements of normal films.

    Parameters
    ----------
    feature_rows
        Per film, its zone features.
    focal_strengths
        Per film, the (local, global) strengths of its round-density candidates.
    name
        The name the report and the SR give the reference.
    films
        Provenance per film (e.g. name, source, licence), stored in the file.
    anatomy
        The anatomy method the films were measured with.

    Raises
    ------
    ModelError
        With no film.
    """
    if not feature_rows:
        raise ModelError("no normal frontal chest film was measured: the reference needs at least one")
    means, spreads = {}, {}
    for name_ in feature_names():
        values = np.array([row.get(name_, math.nan) for row in feature_rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        means[name_] = float(values.mean()) if values.size else 0.0
        spreads[name_] = float(values.std(ddof=1)) if values.size >= 2 else 0.0
    pairs = [pair for film in focal_strengths for pair in film]
    allowed = int(FOCAL_FLAGS_PER_NORMAL_FILM * len(feature_rows))
    threshold, global_threshold = (
        FOCAL_MARGIN * _strongest_allowed([pair[index] for pair in pairs], allowed) for index in (0, 1)
    )
    logger.info(
        "chest reference fitted on %d film(s)", len(feature_rows), extra={"action": "reference.chest_fitted"}
    )
    return ChestReference(
        name=name,
        revision="unsaved",
        means=means,
        spreads=spreads,
        focal_threshold=threshold,
        focal_global_threshold=global_threshold,
        n_films=len(feature_rows),
        films=tuple(dict(film) for film in films),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        anatomy=anatomy,
    )


def fit_from_films(
    images: Iterable[tuple[str, DecodedImage]],
    settings: PipelineSettings,
    *,
    name: str,
    provenance: dict[str, dict[str, str]] | None = None,
    focal_images: Iterable[tuple[str, DecodedImage]] = (),
    seed: int = 0,
    anatomy_model: AnatomySegmenter | None = None,
) -> ChestReference:
    """Measure normal films and build a reference from those that are frontal chest films.

    Parameters
    ----------
    images
        (file name, decoded frame) pairs of normal films: the zone statistics, and the focal model.
    settings
        The pipeline settings (the denoise method of each film's Modality is used).
    name
        The reference's name.
    provenance
        Per file name, what to record about it (e.g. source, licence).
    focal_images
        More films whose lungs hold no nodule (their other findings do not matter), used only to
        train the focal model (:mod:`~miemss_node.pipeline.focal_model`).
    seed
        Seeds the nodules inserted for the focal model.
    anatomy_model
        ``[models] anatomy``, when the node outlines the lungs with it: the reference is then measured
        the same way, and records it.

    Raises
    ------
    ModelError
        If none of the films is a frontal chest film.
    """
    rows: list[dict[str, float]] = []
    strengths: list[list[tuple[float, float]]] = []
    films: list[dict[str, str]] = []
    clean: list[list[FocalCandidate]] = []
    labelled: list[tuple[FocalCandidate, int]] = []
    methods: set[str] = set()
    for role, source in (("normal", images), ("focal", focal_images)):
        for file_name, image in source:
            measured, enhanced = measure_for_reference(image, settings, anatomy_model)
            if measured is None:
                logger.warning("%s is not a frontal chest film: left out", file_name, extra={"action": "reference.skipped"})
                continue
            if role == "normal":
                rows.append(measured.features)
                strengths.append([(c.strength, c.global_strength) for c in measured.candidates])
                methods.add(measured.anatomy.method)
            clean.append(list(measured.candidates))
            labelled += inserted_candidates(image, enhanced, measured, seed + len(films), anatomy_model)
            films.append({"file": file_name, "used_for": role, **(provenance or {}).get(file_name, {})})
    # A film the anatomy model found no lungs on was measured classically: the record says both.
    anatomy = " + ".join(sorted(methods)) or "classical"
    normals = [film for film in films if film["used_for"] == "normal"]
    reference = fit_chest_reference(rows, strengths, name=name, films=normals, anatomy=anatomy)
    model = fit_focal_model(clean, labelled, FOCAL_FLAGS_PER_NORMAL_FILM)
    return replace(reference, focal_model=model, films=tuple(films))


def measure_for_reference(
    image: DecodedImage, settings: PipelineSettings, anatomy_model: AnatomySegmenter | None = None
) -> tuple[ChestMeasurements | None, np.ndarray]:
    """A film measured as the node measures it (None when it is not a frontal chest film), and its
    enhanced pixels."""
    from miemss_node.pipeline.chest import measure_chest
    from miemss_node.pipeline.enhance import enhance
    from miemss_node.pipeline.modality import settings_for_image

    chosen = settings_for_image(settings, image)
    enhanced = enhance(image, chosen.denoise_method).pixels
    return measure_chest(image, enhanced, anatomy_model), enhanced


def insertion_placement(measured: ChestMeasurements, shape: tuple[int, int]) -> np.ndarray:
    """Where training nodules may lie on a film of ``shape`` (source pixels): its hemithoraces, eroded
    by two working pixels so that a nodule stays off their edges."""
    from scipy import ndimage

    rows, cols = shape
    hemithoraces = measured.anatomy.hemithoraces > 0
    row_index = np.minimum((np.arange(rows) * hemithoraces.shape[0]) // rows, hemithoraces.shape[0] - 1)
    col_index = np.minimum((np.arange(cols) * hemithoraces.shape[1]) // cols, hemithoraces.shape[1] - 1)
    return ndimage.binary_erosion(hemithoraces, iterations=2)[np.ix_(row_index, col_index)]


def inserted_candidates(
    image: DecodedImage,
    enhanced: np.ndarray,
    measured: ChestMeasurements,
    seed: int,
    anatomy_model: AnatomySegmenter | None = None,
) -> list[tuple[FocalCandidate, int]]:
    """The candidates of copies of a film with nodules inserted in its lungs, each with the nodule it lies
    on: 0 for none, else a number unique among the film's copies."""
    from miemss_node.pipeline.chest import ASSUMED_FIELD_MM, measure_chest

    rows, cols = enhanced.shape
    placement = insertion_placement(measured, (rows, cols))
    spacing = min(image.pixel_spacing_mm) if image.pixel_spacing_mm else ASSUMED_FIELD_MM / max(rows, cols)
    out = []
    for copy, (pixels, labels) in enumerate(training_copies(enhanced, placement, spacing, seed)):
        again = measure_chest(image, pixels, anatomy_model)
        if again is None:
            continue
        scale = (rows / again.detail_shape[0], cols / again.detail_shape[1])
        for candidate in again.candidates:
            r = min(int(candidate.row * scale[0]), rows - 1)
            c = min(int(candidate.col * scale[1]), cols - 1)
            label = int(labels[r, c])
            out.append((candidate, copy * (TRAINING_NODULES + 1) + label if label else 0))
    return out


def save_chest_reference(reference: ChestReference, path: Path) -> str:
    """Write a reference as JSON; returns its revision."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "name": reference.name,
        "created": reference.created,
        "n_films": reference.n_films,
        "films": list(reference.films),
        **({"focal_model": reference.focal_model.to_dict()} if reference.focal_model is not None else {}),
        "focal_threshold": reference.focal_threshold,
        "focal_global_threshold": reference.focal_global_threshold,
        "anatomy": reference.anatomy,
        "zone_names": list(ZONE_NAMES),
        "means": reference.means,
        "spreads": reference.spreads,
        **({"extra": reference.extra} if reference.extra else {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    _load_cached.cache_clear()
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_chest_reference(path: str | Path = "") -> ChestReference:
    """Load a reference file; "" loads the one shipped with the package (cached per file).

    Raises
    ------
    ModelError
        If the file is missing, not JSON, or not a reference of this format.
    """
    if not path:
        data = resources.files("miemss_node.data").joinpath(DEFAULT_RESOURCE).read_bytes()
        return _parse(data, origin=f"package data {DEFAULT_RESOURCE}")
    file = Path(path)
    try:
        stat = file.stat()
    except OSError as exc:
        raise ModelError(f"chest reference {file} cannot be read: {exc}") from exc
    return _load_cached(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, _size: int, _mtime_ns: int) -> ChestReference:
    return _parse(Path(path).read_bytes(), origin=path)


def _parse(data: bytes, *, origin: str) -> ChestReference:
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"chest reference {origin} is not JSON: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise ModelError(f"chest reference {origin} is not a {FORMAT} version {VERSION} file")
    missing = sorted(set(feature_names()) - set(payload.get("means", {})))
    if missing:
        raise ModelError(f"chest reference {origin} lacks features {missing[:3]}...: build it again")
    return ChestReference(
        name=str(payload["name"]),
        revision=hashlib.sha256(data).hexdigest()[:12],
        means={k: float(v) for k, v in payload["means"].items()},
        spreads={k: float(v) for k, v in payload["spreads"].items()},
        focal_threshold=float(payload["focal_threshold"]),
        focal_global_threshold=float(payload["focal_global_threshold"]),
        n_films=int(payload["n_films"]),
        films=tuple(payload.get("films", ())),
        created=str(payload.get("created", "")),
        focal_model=FocalModel.from_dict(payload["focal_model"]) if "focal_model" in payload else None,
        extra=dict(payload.get("extra", {})),
        anatomy=str(payload.get("anatomy", "classical")),
    )


def _strongest_allowed(strengths: Sequence[float], allowed: int) -> float:
    """The strength exceeded by ``allowed`` candidates (1.0 with none at all)."""
    ordered = sorted(strengths, reverse=True)
    if not ordered:
        return 1.0
    return float(ordered[min(allowed, len(ordered) - 1)])


def _z(value: float, reference: ChestReference, name: str, floor: float) -> float:
    if not math.isfinite(value):
        return 0.0
    spread = max(reference.spreads.get(name, 0.0), floor)
    return (value - reference.means.get(name, 0.0)) / spread
