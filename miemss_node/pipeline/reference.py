"""A reference model of normal films: an Isolation Forest fitted once on a folder of normal images.

``miemss-node reference fit DIR --output FILE`` decodes every image of DIR (DICOM, PNG or JPEG),
runs the enhance and features stages with the configured settings, and fits a standardised
Isolation Forest on all their valid patches. ``[pipeline] reference_model = FILE`` then scores each
new image's patches against it instead of fitting on the image alone, so a patch is "anomalous" when
it is unlike the patches of normal films. The model is named in the report and the SR (role
"reference", its file name and the first 12 hex digits of its SHA-256).

The file is a joblib pickle of scikit-learn objects and plain values: load only files you made
(unpickling runs code).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from miemss_node.errors import DecodeError, ModelError
from miemss_node.pipeline.base import DecodedImage, ModelRun, PatchFeatures, PipelineSettings

logger = logging.getLogger(__name__)

#: Version of the file layout; a file of another version is refused.
FORMAT_VERSION = 1

#: Files of a folder read as pictures rather than DICOM.
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})

#: Patches drawn for the forest's fit; more only cost time (each tree sees 256 anyway).
MAX_FIT_PATCHES = 200_000


@dataclass(frozen=True, kw_only=True)
class ReferenceModel:
    """A fitted reference model and what it was fitted on."""

    name: str
    #: First 12 hex digits of the file's SHA-256: the revision named in the SR.
    revision: str
    scaler: StandardScaler
    forest: IsolationForest
    #: Median and robust standard deviation of the raw scores of the normal patches.
    center: float
    spread: float
    feature_names: tuple[str, ...]
    extractors: tuple[str, ...]
    n_images: int
    n_patches: int
    #: The pipeline settings the features were computed with.
    settings: dict[str, Any]
    created: str

    @property
    def model_run(self) -> ModelRun:
        """How the report and the SR name this model."""
        return ModelRun(
            role="reference",
            name=self.name,
            revision=self.revision,
            parameters=f"Isolation Forest fitted on {self.n_images} normal image(s), {self.n_patches} patches",
        )

    def check_features(self, features: PatchFeatures) -> None:
        """Raise ModelError unless ``features`` have the columns this model was fitted on."""
        if tuple(features.extractors) != self.extractors or features.vectors.shape[1] != len(self.feature_names):
            raise ModelError(
                f"reference model {self.name} was fitted on {self.extractors} features "
                f"({len(self.feature_names)} columns), the pipeline made {tuple(features.extractors)} "
                f"({features.vectors.shape[1]} columns): fit it again with the current settings and models"
            )

    def raw_scores(self, vectors: np.ndarray) -> np.ndarray:
        """Raw anomaly scores (higher is more anomalous) of feature vectors."""
        standardised = self.scaler.transform(vectors.astype(np.float64))
        return np.asarray(-self.forest.score_samples(standardised), dtype=np.float64)


def fit_reference_model(
    images: Iterable[DecodedImage], settings: PipelineSettings, *, name: str = "reference"
) -> ReferenceModel:
    """Fit a reference model on the valid patches of normal images.

    Parameters
    ----------
    images
        Decoded normal films.
    settings
        The pipeline settings (per Modality overrides apply per image), as they will be used.
    name
        The name the report and the SR give the model.

    Returns
    -------
    ReferenceModel
        With ``revision`` "unsaved" until :func:`save_reference_model` writes it.

    Raises
    ------
    ModelError
        If the images give fewer than 100 valid patches.
    """
    from miemss_node.pipeline.enhance import enhance
    from miemss_node.pipeline.features import patch_features
    from miemss_node.pipeline.modality import settings_for_image

    blocks = []
    extractors: tuple[str, ...] = ()
    used: dict[str, Any] = {}
    count = 0
    for image in images:
        chosen = settings_for_image(settings, image)
        features = patch_features(enhance(image, chosen.denoise_method), chosen)
        valid = np.ones(features.vectors.shape[0], dtype=bool) if features.valid is None else features.valid.ravel()
        valid &= np.isfinite(features.vectors).all(axis=1)
        blocks.append(features.vectors[valid])
        extractors = features.extractors
        used = {k: v for k, v in asdict(chosen).items() if k != "modality_overrides"}
        count += 1
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, 0))
    return fit_on_vectors(vectors, settings, name=name, n_images=count, extractors=extractors, used=used)


def fit_on_vectors(
    vectors: np.ndarray,
    settings: PipelineSettings,
    *,
    name: str,
    n_images: int,
    extractors: tuple[str, ...] = ("hog",),
    used: dict[str, Any] | None = None,
) -> ReferenceModel:
    """Fit a reference model on feature vectors of normal patches (see :func:`fit_reference_model`).

    Raises
    ------
    ModelError
        If there are fewer than 100 vectors.
    """
    from miemss_node.pipeline.anomaly import robust_center_spread
    from miemss_node.pipeline.features import FEATURE_NAMES

    count = n_images
    if vectors.shape[0] < 100:
        raise ModelError(f"only {vectors.shape[0]} valid patches in {count} image(s): give more normal films")
    names = FEATURE_NAMES if vectors.shape[1] == len(FEATURE_NAMES) else tuple(f"f{i}" for i in range(vectors.shape[1]))
    rng = np.random.default_rng(settings.random_seed)
    fit_on = vectors if vectors.shape[0] <= MAX_FIT_PATCHES else vectors[rng.choice(vectors.shape[0], MAX_FIT_PATCHES)]
    scaler = StandardScaler().fit(fit_on.astype(np.float64))
    forest = IsolationForest(n_estimators=settings.n_estimators, random_state=settings.random_seed)
    forest.fit(scaler.transform(fit_on.astype(np.float64)))
    raw = -forest.score_samples(scaler.transform(vectors.astype(np.float64)))
    center, spread = robust_center_spread(raw)
    logger.info(
        "reference model fitted on %d image(s), %d patches",
        count,
        vectors.shape[0],
        extra={"action": "reference.fitted"},
    )
    return ReferenceModel(
        name=name,
        revision="unsaved",
        scaler=scaler,
        forest=forest,
        center=center,
        spread=spread,
        feature_names=names,
        extractors=extractors,
        n_images=count,
        n_patches=int(vectors.shape[0]),
        settings=used or {},
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def save_reference_model(model: ReferenceModel, path: Path) -> str:
    """Write a model with joblib; returns its revision (the first 12 hex digits of its SHA-256)."""
    import joblib

    payload = {
        "format": FORMAT_VERSION,
        **{key: value for key, value in asdict(model).items() if key not in ("revision", "scaler", "forest")},
        "scaler": model.scaler,
        "forest": model.forest,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(payload, path, compress=3)
    _load_cached.cache_clear()
    return _revision(path)


def load_reference_model(path: str | Path) -> ReferenceModel:
    """Load a reference model (cached per file path, size and modification time).

    Raises
    ------
    ModelError
        If the file is missing, unreadable or of another format.
    """
    file = Path(path)
    try:
        stat = file.stat()
    except OSError as exc:
        raise ModelError(f"reference model {file} cannot be read: {exc}") from exc
    return _load_cached(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, _size: int, _mtime_ns: int) -> ReferenceModel:
    import joblib

    try:
        payload = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - joblib/pickle raise many types on a bad file
        raise ModelError(f"reference model {path} is not a joblib file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ModelError(f"reference model {path} is not a format-{FORMAT_VERSION} MIEMSS reference model")
    fields = {key: value for key, value in payload.items() if key != "format"}
    fields["feature_names"] = tuple(fields["feature_names"])
    fields["extractors"] = tuple(fields["extractors"])
    return ReferenceModel(revision=_revision(Path(path)), **fields)



def _revision(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest[:12]


def images_in(folder: Path, max_frames: int = 1) -> Iterator[DecodedImage]:
    """Decode every image file under ``folder`` (DICOM, PNG, JPEG); files that are not images are skipped.

    A skipped file is logged with its reason; at most ``max_frames`` frames per DICOM instance.
    """
    return images_from_files(sorted(p for p in folder.rglob("*") if p.is_file()), max_frames)


def images_from_files(paths: Iterable[Path], max_frames: int = 1) -> Iterator[DecodedImage]:
    """Decode these image files (DICOM, PNG, JPEG) as :func:`images_in` does."""
    from miemss_node.pipeline.decode import decode_dataset, decode_image_file, is_image_dataset, read_dicom_file

    for path in paths:
        try:
            if path.suffix.lower() in PICTURE_SUFFIXES:
                yield decode_image_file(path)
                continue
            ds = read_dicom_file(path)
            if not is_image_dataset(ds):
                logger.info("%s is not an image: skipped", path.name, extra={"action": "reference.skipped"})
                continue
            yield from decode_dataset(ds, max_frames)
        except DecodeError as exc:
            logger.warning("%s skipped: %s", path.name, exc, extra={"action": "reference.skipped"})
