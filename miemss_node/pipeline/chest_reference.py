"""The normal reference of the chest analysis: what lung zones and round densities look like on normal
frontal chest films, and how far a new film is from that.

A reference is a small JSON file: for every zone feature (:func:`~miemss_node.pipeline.zones.zone_features`)
the mean and standard deviation over normal films, the strength of round-density candidates that normal
films reach, and the provenance of every film it was built from. ``miemss-node reference chest DIR
--output FILE`` builds one from a hospital's own normal films; the node ships one built from the public
normal films whose licence allows it (``miemss_node/data/chest_reference.json``, provenance inside).

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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from miemss_node.errors import ModelError
from miemss_node.pipeline.base import DecodedImage, ModelRun, PipelineSettings
from miemss_node.pipeline.zones import PERCENTILES, SIDES, ZONE_NAMES, ZONES, ZoneKey, feature_names

logger = logging.getLogger(__name__)

#: Evidence (z) at which a zone or a round density is flagged; the abnormality score is 0.5 there.
FLAG_EVIDENCE = 3.0
#: Evidence per unit of the abnormality score's logistic slope (score = 1 / (1 + exp(-(e - 3) / 1))).
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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_run(self) -> ModelRun:
        """How the report and the SR name this reference."""
        return ModelRun(
            role="reference",
            name=self.name,
            revision=self.revision,
            parameters=f"normal chest reference of {self.n_films} film(s): lung zone densities and round densities",
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


def focal_evidence(strength: float, global_strength: float, reference: ChestReference) -> float:
    """Evidence of a round-density candidate: :data:`FLAG_EVIDENCE` at either of the reference's thresholds."""
    return FLAG_EVIDENCE * max(
        strength / max(reference.focal_threshold, 1e-6), global_strength / max(reference.focal_global_threshold, 1e-6)
    )


def fit_chest_reference(
    feature_rows: Sequence[dict[str, float]],
    focal_strengths: Sequence[Sequence[tuple[float, float]]],
    *,
    name: str,
    films: Sequence[dict[str, str]] = (),
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
    )


def fit_from_films(
    images: Iterable[tuple[str, DecodedImage]],
    settings: PipelineSettings,
    *,
    name: str,
    provenance: dict[str, dict[str, str]] | None = None,
) -> ChestReference:
    """Measure normal films and build a reference from those that are frontal chest films.

    Parameters
    ----------
    images
        (file name, decoded frame) pairs of normal films.
    settings
        The pipeline settings (the denoise method of each film's Modality is used).
    name
        The reference's name.
    provenance
        Per file name, what to record about it (e.g. source, licence).

    Raises
    ------
    ModelError
        If none of the films is a frontal chest film.
    """
    from miemss_node.pipeline.chest import measure_chest
    from miemss_node.pipeline.enhance import enhance
    from miemss_node.pipeline.modality import settings_for_image

    rows, strengths, films = [], [], []
    for file_name, image in images:
        chosen = settings_for_image(settings, image)
        measured = measure_chest(image, enhance(image, chosen.denoise_method).pixels)
        if measured is None:
            logger.warning("%s is not a frontal chest film: left out", file_name, extra={"action": "reference.skipped"})
            continue
        rows.append(measured.features)
        strengths.append([(candidate.strength, candidate.global_strength) for candidate in measured.candidates])
        films.append({"file": file_name, **(provenance or {}).get(file_name, {})})
    return fit_chest_reference(rows, strengths, name=name, films=films)


def save_chest_reference(reference: ChestReference, path: Path) -> str:
    """Write a reference as JSON; returns its revision."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "name": reference.name,
        "created": reference.created,
        "n_films": reference.n_films,
        "films": list(reference.films),
        "focal_threshold": reference.focal_threshold,
        "focal_global_threshold": reference.focal_global_threshold,
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
        extra=dict(payload.get("extra", {})),
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
