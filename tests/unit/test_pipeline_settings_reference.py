"""Per-Modality settings, patch size in mm, lung fields, robust scores and reference models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from miemss_node.config import load_config
from miemss_node.errors import ConfigError, ModelError
from miemss_node.pipeline.anomaly import REFERENCE_METHOD, intensity_zscore, score_patches
from miemss_node.pipeline.base import DecodedImage, EnhancedImage, PatchFeatures, PipelineSettings
from miemss_node.pipeline.decode import decode_dataset, read_dicom_file
from miemss_node.pipeline.features import FEATURE_NAMES, patch_features, to_working
from miemss_node.pipeline.field_of_view import field_mask, lung_field
from miemss_node.pipeline.modality import settings_for_image
from miemss_node.pipeline.reference import (
    fit_on_vectors,
    fit_reference_model,
    load_reference_model,
    save_reference_model,
)
from miemss_node.pipeline.runner import analyse_image
from tests.support.paths import wg04_chest_cr

MINIMAL = "[node]\nport = 0\n"


@pytest.fixture(scope="module")
def chest() -> DecodedImage:
    (image,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    return image


def _features(n: int, seed: int = 0) -> PatchFeatures:
    vectors = np.random.default_rng(seed).normal(size=(n * n, len(FEATURE_NAMES))).astype(np.float32)
    return PatchFeatures(vectors=vectors, grid_shape=(n, n), patch_size_px=(8.0, 8.0), extractors=("hog",))


# --- configuration ------------------------------------------------------------------------------


def test_modality_tables_override_only_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        MINIMAL + "[pipeline]\nthreshold = 0.4\n[pipeline.modality.CR]\npatch_size_mm = 6.0\n"
        "[pipeline.modality.US]\ndenoise_method = 'bilateral'\nthreshold = 0.7\n",
        encoding="utf-8",
    )
    pipeline = load_config(path, environ={}).pipeline
    assert pipeline.for_modality("CR") == replace(pipeline, patch_size_mm=6.0, modality_overrides=())
    assert pipeline.for_modality("us").denoise_method == "bilateral"
    assert pipeline.for_modality("US").threshold == 0.7
    assert pipeline.for_modality("MR") is pipeline


def test_modality_problems_are_listed_with_the_others(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        MINIMAL + "[pipeline]\nscore_scale = 'loud'\n[pipeline.modality.cr]\nthreshold = 0.5\n"
        "[pipeline.modality.DX]\npatch_size_mm = -1.0\nreference_model = 'missing.joblib'\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"(?s)modality.cr\] is not a Modality.*score_scale 'loud'.*DX\] patch_size_mm must"):
        load_config(path, environ={})


def test_an_inherited_problem_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL + "[pipeline]\nscore_scale = 'loud'\n[pipeline.modality.DX]\nthreshold = 0.5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\(1 problem\(s\)\)"):
        load_config(path, environ={})


def test_the_shipped_config_has_settings_for_every_modality_of_the_issue() -> None:
    config = load_config(Path(__file__).resolve().parents[2] / "config.toml", environ={})
    configured = {name for name, _ in config.pipeline.modality_overrides}
    assert {"CR", "DX", "MG", "CT", "MR", "US"} <= configured
    assert config.pipeline.for_modality("CR").patch_size_mm > 0


# --- settings of one image ----------------------------------------------------------------------


def test_a_patch_in_mm_becomes_working_pixels() -> None:
    image = DecodedImage(pixels=np.zeros((2048, 2048), np.float32), pixel_spacing_mm=(0.2, 0.2), modality="CR")
    chosen = settings_for_image(PipelineSettings(patch_size_mm=6.0), image)
    # 2048 px at 0.2 mm -> 512 working px at 0.8 mm: 6 mm is 7.5, rounded to 8.
    assert chosen.patch_size == 8
    assert settings_for_image(PipelineSettings(patch_size_mm=6.0), replace(image, pixel_spacing_mm=None)).patch_size == 16


def test_lung_fields_are_only_looked_for_on_chest_films() -> None:
    image = DecodedImage(pixels=np.zeros((64, 64), np.float32), pixel_spacing_mm=None, body_part="EXTREMITY")
    assert settings_for_image(PipelineSettings(), image).lung_field is False
    assert settings_for_image(PipelineSettings(), replace(image, body_part="CHEST")).lung_field is True


def test_the_runner_uses_the_modality_override(chest: DecodedImage) -> None:
    small = replace(chest, pixels=chest.pixels[::4, ::4].copy(), modality="CR")
    settings = PipelineSettings(modality_overrides=(("CR", PipelineSettings(denoise_method="none")),))
    assert analyse_image(small, settings).enhanced.method == "none"


# --- field of view and lungs --------------------------------------------------------------------


def test_the_chest_film_has_two_lung_fields_inside_its_field(chest: DecodedImage) -> None:
    work = to_working(chest.pixels, 512)
    field = field_mask(work)
    lungs = lung_field(work, field)
    assert lungs is not None
    assert not (lungs & ~field).any()
    left, right = lungs[:, : work.shape[1] // 2].sum(), lungs[:, work.shape[1] // 2 :].sum()
    assert 0.4 < left / right < 2.5
    assert 0.1 < lungs.mean() < 0.5


def test_no_lungs_are_made_up_on_a_flat_or_striped_image() -> None:
    flat = np.full((256, 256), 0.5, dtype=np.float32)
    assert lung_field(flat, np.ones(flat.shape, dtype=bool)) is None
    stripes = np.tile(np.repeat(np.array([0.2, 0.8], dtype=np.float32), 32), (256, 4))
    assert lung_field(stripes, field_mask(stripes)) is None


# --- scores -------------------------------------------------------------------------------------


def test_robust_scores_leave_a_normal_image_near_zero() -> None:
    features = _features(20)
    robust = score_patches(features, PipelineSettings()).scores
    minmax = score_patches(features, PipelineSettings(score_scale="minmax")).scores
    assert float(minmax.max()) == 1.0
    assert float(robust.max()) < 0.5


def test_robust_scores_flag_a_far_outlier() -> None:
    features = _features(20)
    features.vectors[57] = 40.0
    scores = score_patches(features, PipelineSettings()).scores.ravel()
    assert int(np.argmax(scores)) == 57
    assert float(scores[57]) > 0.5


def test_the_baseline_scores_bright_patches() -> None:
    pixels = np.full((128, 128), 0.3, dtype=np.float32)
    pixels += np.random.default_rng(0).normal(0, 0.01, pixels.shape).astype(np.float32)
    pixels[32:48, 64:80] = 0.9
    enhanced = EnhancedImage(pixels=pixels, method="none")
    settings = PipelineSettings(lung_field=False)
    features = replace(patch_features(enhanced, settings), valid=None)
    scores = intensity_zscore(enhanced, features, settings).scores
    assert np.unravel_index(int(np.argmax(scores)), scores.shape) == (2, 4)


# --- reference model ----------------------------------------------------------------------------


def test_a_reference_model_round_trips_and_is_named(tmp_path: Path) -> None:
    model = fit_on_vectors(_features(20).vectors, PipelineSettings(), name="normals", n_images=3)
    path = tmp_path / "ref.joblib"
    revision = save_reference_model(model, path)
    loaded = load_reference_model(path)
    assert (loaded.name, loaded.revision, loaded.n_images) == ("normals", revision, 3)
    scores = score_patches(_features(20, seed=1), PipelineSettings(reference_model=str(path)))
    assert scores.method == REFERENCE_METHOD
    assert scores.model is not None
    assert (scores.model.role, scores.model.name, scores.model.revision) == ("reference", "normals", revision)


def test_a_reference_model_of_other_features_is_refused(tmp_path: Path) -> None:
    model = fit_on_vectors(_features(20).vectors, PipelineSettings(), name="normals", n_images=1)
    path = tmp_path / "ref.joblib"
    save_reference_model(model, path)
    wider = _features(20)
    wider = replace(wider, vectors=np.hstack([wider.vectors, wider.vectors[:, :2]]), extractors=("hog", "vit"))
    with pytest.raises(ModelError, match="fit it again"):
        score_patches(wider, PipelineSettings(reference_model=str(path)))


def test_a_file_that_is_not_a_reference_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bogus.joblib"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="is not a joblib file"):
        load_reference_model(path)


def test_fitting_on_real_films(chest: DecodedImage) -> None:
    small = replace(chest, pixels=chest.pixels[::2, ::2].copy())
    model = fit_reference_model([small, replace(small, pixels=small.pixels[:, ::-1].copy())], PipelineSettings())
    assert model.n_images == 2
    assert model.n_patches >= 100
    assert model.spread > 0


# The WG04 film's Patient's Name has one component; highdicom warns when it copies it into the SR.
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name:UserWarning")
def test_the_report_and_the_sr_name_the_reference_model(tmp_path: Path) -> None:
    from pydicom import dcmread

    from miemss_node.process import process_file

    model = fit_on_vectors(_features(20).vectors, PipelineSettings(), name="chest-normals", n_images=4)
    path = tmp_path / "ref.joblib"
    revision = save_reference_model(model, path)
    source = wg04_chest_cr()
    # The generic analysis scores against a reference model; a frontal chest film would get the chest one.
    settings = PipelineSettings(reference_model=str(path), analysis_max_side=128, patch_size=8, chest_analysis=False)
    process_file(source, tmp_path / "out", settings)
    report = (tmp_path / "out" / "report.txt").read_text(encoding="utf-8")
    assert f"reference chest-normals ({revision}" in report
    (sr_path,) = (tmp_path / "out").glob("SR_*.dcm")
    texts: list[str] = []
    dcmread(sr_path).walk(lambda _ds, elem: texts.append(str(elem.value)) if elem.keyword == "TextValue" else None)
    assert any("chest-normals" in text for text in texts)
