"""The evaluation: synthetic lesions, metrics, user pairs, output files and the two commands."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from miemss_node.cli import main
from miemss_node.evaluate.devices import device_statements
from miemss_node.evaluate.lesions import insert_lesions, lesion_profile
from miemss_node.evaluate.metrics import dice_iou, match, psnr_ssim
from miemss_node.evaluate.output import enhancement_table, plot_png, real_table, synthetic_table, write_json
from miemss_node.evaluate.pairs import MaskError, evaluate_pairs, load_pair
from miemss_node.evaluate.real import FilmResult, summarise_films
from miemss_node.evaluate.synthetic import (
    DETECTORS,
    EvaluationImage,
    SyntheticPlan,
    evaluate_synthetic,
    leave_one_out_references,
    summarise,
)
from miemss_node.evaluate.zones import ZoneMasks, classify_region, disease_zones_found
from miemss_node.pipeline.base import DecodedImage, PipelineSettings
from miemss_node.pipeline.decode import decode_dataset, read_dicom_file
from miemss_node.pipeline.objects import COMPACT, LINE, METAL
from miemss_node.pipeline.reference import load_reference_model
from tests.support.paths import shared_file, wg04_chest_cr

#: Small settings, so that each pipeline run takes a fraction of a second.
FAST = PipelineSettings(analysis_max_side=256, patch_size=8, denoise_method="wavelet", n_estimators=30)


@pytest.fixture(scope="module")
def films() -> list[EvaluationImage]:
    (chest,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    # A darker rendering of the film: RG1's lungs display at 0.65-0.9, and a lesion added on top would
    # saturate the display (and be taken for a burned-in annotation).
    pixels = (chest.pixels[::4, ::4] * 0.6).astype(np.float32)
    small = replace(chest, pixels=pixels, pixel_spacing_mm=(0.8, 0.8))
    mirrored = replace(small, pixels=small.pixels[:, ::-1].copy())
    return [
        EvaluationImage(name="chest", image=small, spacing_assumed=True),
        EvaluationImage(name="mirrored", image=mirrored, spacing_assumed=True),
    ]


# --- lesions and metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nodule", "opacity"])
def test_a_lesion_profile_peaks_inside_its_mask(kind: str) -> None:
    profile, mask = lesion_profile(kind, 10.0, np.random.default_rng(0))
    assert profile.shape == mask.shape
    assert float(profile.max()) == pytest.approx(1.0, abs=0.05)
    assert not profile[~mask].any()
    assert 150 < int(mask.sum()) < 420  # about pi * 10^2, the opacity a little irregular


def test_lesions_are_added_inside_the_placement_mask_and_labelled() -> None:
    pixels = np.full((200, 200), 0.2, dtype=np.float32)
    placement = np.zeros(pixels.shape, dtype=bool)
    placement[20:180, 100:190] = True
    out, labels, lesions = insert_lesions(
        pixels, placement, 0.5, kind="nodule", contrast=0.1, count=2, diameter_range_mm=(8, 12), rng=np.random.default_rng(3)
    )
    assert len(lesions) == 2
    assert set(np.unique(labels)) == {0, 1, 2}
    assert not (labels > 0)[~placement].any()
    assert float(out.max()) == pytest.approx(0.3, abs=0.01)
    assert all(8 <= lesion.diameter_mm <= 12 for lesion in lesions)


def test_unknown_lesion_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown lesion kind 'cyst'"):
        lesion_profile("cyst", 5.0, np.random.default_rng(0))


def test_dice_iou_and_lesion_matching() -> None:
    reference = np.zeros((10, 10), dtype=np.uint16)
    reference[0:4, 0:4] = 1
    reference[6:9, 6:9] = 2
    predicted = np.zeros((10, 10), dtype=np.uint16)
    predicted[0:4, 2:6] = 1  # half on lesion 1
    predicted[8:10, 0:2] = 2  # nowhere near a lesion
    detection = match(predicted, reference)
    assert (detection.lesions, detection.hits, detection.false_positives) == (2, 1, 1)
    assert detection.hit_by_label == {1: True, 2: False}
    assert detection.dice == pytest.approx(2 * 8 / (20 + 25))
    assert dice_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == (None, None)


def test_statements_about_lines_and_devices_are_judged_against_the_drawn_objects() -> None:
    """A line said where a wire is drawn is right, one said where only a marker is drawn is wrong, a
    drawn device not said is missed; a film with jewellery or without zones is not judged."""

    def film(devices: tuple[str, ...], drawn: tuple[str, ...] | None) -> FilmResult:
        return FilmResult(
            file="f.png", status="normal", split="development", view="PA", method="chest", abnormality_score=0.1,
            regions=(), devices=devices, drawn_objects=drawn,
        )  # fmt: skip

    results = [
        film((LINE, COMPACT), ("wire", "marker")),
        film((LINE, METAL), ("marker",)),
        film((COMPACT,), ("device", "tube")),
        film((LINE, METAL), ("jewellery",)),
        film((LINE, METAL), None),
    ]
    counts = device_statements(results)
    assert counts[LINE] == {"said_and_drawn": 1, "said_not_drawn": 1, "drawn_not_said": 1}
    assert counts[METAL] == {"said_and_drawn": 0, "said_not_drawn": 1, "drawn_not_said": 1}
    assert summarise_films(results)["device_statements"] == counts


def test_each_drawn_disease_zone_is_found_or_not() -> None:
    """Disease drawn in both lungs and a region on one of them: one zone of two found. A region that is
    mostly on an object does not find the disease under it."""
    shape = (100, 100)
    lungs = np.zeros(shape, dtype=bool)
    lungs[20:80, 10:45] = lungs[20:80, 55:90] = True
    left, right = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    left[50:75, 12:40] = True
    right[50:75, 60:88] = True
    objects = np.zeros(shape, dtype=bool)
    objects[55:70, 62:80] = True
    masks = ZoneMasks(lungs=lungs, lung_interiors=lungs, disease=[left, right], objects=objects)
    on_left, on_object = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    on_left[45:70, 15:40] = True
    on_object[58:68, 65:78] = True
    regions = [on_left, on_object]
    classes = [classify_region(region, masks) for region in regions]
    assert disease_zones_found(regions, classes, masks) == (True, False)
    assert disease_zones_found([], [], masks) == (False, False)


def test_psnr_and_ssim_of_an_identical_image() -> None:
    image = np.random.default_rng(0).random((64, 64))
    psnr, ssim = psnr_ssim(image, np.clip(image + 0.01, 0, 1))
    assert 35 < psnr < 45
    assert ssim > 0.9


# --- the synthetic evaluation -------------------------------------------------------------------


def test_every_detector_is_run_and_summarised(films: list[EvaluationImage], tmp_path: Path) -> None:
    plan = SyntheticPlan(kinds=("nodule",), contrasts=(0.3,), lesions_per_image=2, diameter_range_mm=(20, 30), trials=1)
    result = evaluate_synthetic(films, FAST, plan, leave_one_out_references(films, FAST), reference_label="loo")
    assert {run.detector for run in result.runs} == set(DETECTORS)
    assert len(result.runs) == len(films) * 2 * len(DETECTORS)  # a clean and a lesioned run each
    rows = summarise(result.runs)
    lesioned = [r for r in rows if r["kind"] == "nodule"]
    assert all(r["lesions"] == 4 for r in lesioned)
    assert all(0.0 <= float(r["sensitivity"]) <= 1.0 for r in lesioned)  # type: ignore[arg-type]
    assert "per_image: Dice" in synthetic_table(result)
    assert "vst" not in enhancement_table(result)  # FAST denoises with "wavelet"
    write_json(tmp_path / "e.json", result)
    assert json.loads((tmp_path / "e.json").read_text())["summary"]
    plot_png(tmp_path / "e.png", result)
    with Image.open(tmp_path / "e.png") as plot:
        assert plot.width > 200


def test_an_obvious_large_nodule_is_found(films: list[EvaluationImage]) -> None:
    plan = SyntheticPlan(kinds=("nodule",), contrasts=(0.2,), lesions_per_image=1, diameter_range_mm=(28, 30), trials=1)
    result = evaluate_synthetic(films[:1], replace(FAST, threshold=0.3), plan)
    hits = [run.hits for run in result.runs if run.detector == "per_image" and run.kind == "nodule"]
    assert hits == [1]


# --- user pairs ---------------------------------------------------------------------------------


def test_a_png_mask_pair(tmp_path: Path) -> None:
    image = np.zeros((64, 64), dtype=np.uint8)
    image[10:20, 10:20] = 200
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:20, 10:20] = 255
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    decoded, lesions = load_pair(tmp_path / "image.png", tmp_path / "mask.png")
    assert decoded.modality == "CR"
    assert int(lesions.max()) == 1
    records = evaluate_pairs([(tmp_path / "image.png", tmp_path / "mask.png")], FAST)
    assert {r["detector"] for r in records} == {"isolation_forest", "zscore"}


def test_a_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(MaskError, match="is \\(32, 32\\), the image image.png is \\(64, 64\\)"):
        load_pair(tmp_path / "image.png", tmp_path / "mask.png")


def test_a_dicom_seg_is_a_reference_mask() -> None:
    image = shared_file("dicom/xray/study_cr_cspine_16x16/CR1_6154.dcm")
    seg = shared_file("dicom/nonimage/seg_on_cr1_6154_highdicom_binary.dcm")
    decoded, lesions = load_pair(image, seg)
    assert lesions.shape == decoded.pixels.shape == (16, 16)
    assert lesions.any()


# --- the commands -------------------------------------------------------------------------------


def _picture(path: Path, film: DecodedImage) -> Path:
    Image.fromarray(np.clip(np.rint(film.pixels * 255), 0, 255).astype(np.uint8)).save(path)
    return path


def test_reference_fit_and_evaluate_commands(
    films: list[EvaluationImage], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    normals = tmp_path / "normals"
    normals.mkdir()
    for item in films:
        _picture(normals / f"{item.name}.png", item.image)
    config = tmp_path / "config.toml"
    config.write_text(
        "[pipeline]\nanalysis_max_side = 256\npatch_size = 8\ndenoise_method = 'wavelet'\nn_estimators = 30\n",
        encoding="utf-8",
    )
    model = tmp_path / "ref.joblib"
    assert main(["reference", "fit", str(normals), "--output", str(model), "--config", str(config)]) == 0
    assert load_reference_model(model).n_images == 2
    out = tmp_path / "evaluation"
    argv = ["evaluate", "--config", str(config), "--images", str(normals), "--reference-model", str(model)]
    argv += ["--contrasts", "0.2", "--kinds", "nodule", "--trials", "1", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "reference: Dice" in printed and "zscore: Dice" in printed
    assert (out / "evaluation.json").is_file() and (out / "evaluation.png").is_file()


def test_evaluate_without_inputs_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate"]) == 2
    assert "give --zones FILE" in capsys.readouterr().out


def test_the_summary_gives_how_much_of_the_drawn_lungs_the_hemithoraces_cover() -> None:
    """The median and lowest share over the films whose lungs were found; a film without is left out."""

    def film(covered: float | None) -> FilmResult:
        return FilmResult(
            file="f.png", status="normal", split="development", view="PA", method="chest", abnormality_score=0.1,
            regions=(), lungs_covered=covered,
        )  # fmt: skip

    summary = summarise_films([film(0.9), film(0.6), film(None), film(0.8)])
    assert summary["lungs_covered"] == {"median": 0.8, "lowest": 0.6}
    assert summarise_films([film(None)])["lungs_covered"] is None
    assert "inside the hemithoraces found: median 0.80, lowest 0.60" in real_table({"development": summary})
