"""The chest analysis on real films: objects, anatomy, zones, the normal reference, regions and words."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from miemss_node.errors import ModelError
from miemss_node.evaluate.real import decode_film
from miemss_node.evaluate.zones import classify_region, load_zone_file, zone_masks
from miemss_node.pipeline.anatomy import ANATOMY_SIDE, find_chest_frame, right_on_image_left
from miemss_node.pipeline.base import DecodedImage, PipelineSettings
from miemss_node.pipeline.chest import (
    ChestMeasurements,
    judge_chest,
    location_words,
    measure_chest,
    mm_per_pixel,
    resize_labels,
)
from miemss_node.pipeline.chest_reference import (
    FLAG_EVIDENCE,
    abnormality,
    evidence_at,
    focal_evidence,
    load_chest_reference,
    save_chest_reference,
)
from miemss_node.pipeline.enhance import enhance
from miemss_node.pipeline.features import to_working
from miemss_node.pipeline.field_of_view import field_mask
from miemss_node.pipeline.focal import (
    FEATURE_NAMES,
    FocalCandidate,
    blob_extent,
    hessian_eigenvalues_at,
    scale_responses,
)
from miemss_node.pipeline.focal_model import MODEL_FEATURES, FocalModel
from miemss_node.pipeline.objects import COMPACT, LINE, METAL, TEXT, electrode_snap_near, find_objects
from miemss_node.pipeline.zones import zone_masks as pipeline_zone_masks
from tests.support.paths import REPO_ROOT, SHARED_DATA, shared_file

ZONE_FILE = REPO_ROOT / "benchmarks" / "zones" / "shared_chest_films.json"


def _film(name_part: str) -> tuple[DecodedImage, object]:
    shared_file("images/actualmed_dev/labels.csv")  # skips without the shared data
    (film,) = [f for f in load_zone_file(ZONE_FILE) if name_part in f.file]
    return decode_film(SHARED_DATA / film.file, view=film.view), film


def _measured(name_part: str) -> tuple[DecodedImage, object, ChestMeasurements]:
    """A film of the zone file, its drawn zones, and what the chest analysis measured on it."""
    image, film = _film(name_part)
    measured = measure_chest(image, enhance(image, "vst_wavelet").pixels)
    assert measured is not None
    return image, film, measured


@pytest.fixture(scope="module")
def normal_pa() -> tuple[DecodedImage, object]:
    """A normal PA film of the development set (ANON1), with its drawn zones."""
    return _film("2020031914434008949")


# --- objects ------------------------------------------------------------------------------------


def test_markers_text_and_a_drawn_wire_are_objects(normal_pa: tuple[DecodedImage, object]) -> None:
    image, film = normal_pa
    work = to_working(image.pixels, 512).copy()
    rows, cols = work.shape
    # A thin, bright, curved line across the lung: an ECG lead.
    t = np.linspace(0, 1, 400)
    rr = (0.3 + 0.4 * t) * rows
    cc = (0.2 + 0.15 * np.sin(3 * t)) * cols
    for r, c in zip(rr.astype(int), cc.astype(int), strict=True):
        work[r : r + 2, c : c + 2] = np.clip(work[r : r + 2, c : c + 2] + 0.35, 0, 1)
    found = find_objects(work, field_mask(work), mm_per_pixel(image, rows))
    assert LINE in found.kinds
    assert found.mask[rr.astype(int)[200], cc.astype(int)[200]]
    masks = zone_masks(film, (rows, cols), mm_per_pixel(image, rows))  # type: ignore[arg-type]
    marker = [z for z in film.zones if z.get("what") == "marker"][0]  # type: ignore[attr-defined]
    top, left, bottom, right = marker["box"]
    box = found.mask[int(top * rows / 100) : int(bottom * rows / 100), int(left * cols / 100) : int(right * cols / 100)]
    assert box.mean() > 0.5  # the lead marker "D"
    assert not (found.mask & masks.lungs).mean() > 0.05  # the lungs themselves are not objects
    assert COMPACT in found.kinds or LINE in found.kinds


def test_the_frame_edge_is_masked_but_not_reported_as_a_device() -> None:
    """A bright strip along the top of the frame (a film's or a collimator's edge, as on the WG04 chest
    film) and a line along its right edge are left out, not called a marker or a wire; the same strip
    inside the film is."""
    mm = 0.8
    image = _noisy_field((500, 500))
    image[1:5, 40:70] += 0.6  # along the top edge
    image[100:300, 496:499] += 0.6  # along the right edge
    found = find_objects(image, np.ones(image.shape, dtype=bool), mm)
    assert found.mask[2, 55] and found.mask[200, 497]
    assert found.kinds == {}
    image[250:254, 240:270] += 0.6  # the same strip in the middle of the film: saturated, so text
    assert TEXT in find_objects(image, np.ones(image.shape, dtype=bool), mm).kinds


def test_a_circled_marker_and_a_word_are_reported_as_text_not_as_devices() -> None:
    """A circled letter marker is saturated, compact and a closed ring all at once, and a word is a row of
    compact letters: both are text. A wire beside them stays a wire."""
    mm = 0.8
    image = _noisy_field((500, 500))
    rows, cols = np.indices(image.shape)
    ring = np.abs(np.hypot(rows - 100, cols - 100) - 12) <= 1.5
    image[ring] = 1.0  # the circle of a lead marker, drawn at full white
    image[94:107, 97:103] = 1.0  # and its letter
    for left in range(200, 330, 13):  # a burned-in word: ten letters in a row
        image[60:72, left : left + 9] += 0.6
        image[63:69, left + 3 : left + 6] -= 0.6
    image[300:303, 100:400] += 0.35  # a wire
    kinds = find_objects(image, np.ones(image.shape, dtype=bool), mm).kinds
    assert kinds[TEXT] >= 12  # the marker's parts and the ten letters
    assert kinds[LINE] == 1, kinds  # the wire, not the marker's ring
    assert kinds.get(COMPACT, 0) <= 1, kinds  # at most the wire again, as before; no letter


def test_a_marker_sized_ring_or_disc_is_masked_but_not_said_to_be_a_line_or_a_device() -> None:
    """A circled marker's ring (24 mm across) is long and thin enough to be a line, and a bright disc of a
    marker's size has a metal's crisp outline: both are masked, neither is reported as a line, tube or
    wire or as a metal device. A generator-sized body (40 x 50 mm) with the same outline is a device."""
    mm = 0.8
    image = _noisy_field((500, 500))
    rows, cols = np.indices(image.shape)
    ring = np.abs(np.hypot(rows - 100, cols - 100) - 15) <= 1.5
    image[ring] += 0.35  # not saturated: not found as text
    image[_disc_mask(image.shape, (100, 300), 12)] += 0.3  # a disc marker, 19 mm across
    found = find_objects(image, np.ones(image.shape, dtype=bool), mm)
    assert found.mask[100, 85] and found.mask[100, 300]
    assert LINE not in found.kinds and METAL not in found.kinds, found.kinds
    generator = _noisy_field((500, 500))
    generator[250:312, 150:200] += 0.3  # a pacemaker's generator: 50 x 40 mm
    assert find_objects(generator, np.ones(generator.shape, dtype=bool), mm).kinds.get(METAL) == 1


def _noisy_field(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape, dtype=np.float32)
    return (0.45 + 0.1 * rows / shape[0] + 0.02 * np.sin(cols / 9.0) + rng.normal(0, 0.01, shape)).astype(np.float32)


def _disc_mask(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.indices(shape)
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


def test_an_electrode_snap_is_told_from_a_nodule_a_calcification_and_a_crossing_wire() -> None:
    """At 0.16 mm a pixel (a 2500-pixel film): a 5 mm disc with the snap's 2 mm ring is an electrode; a
    nodule of the same size, one with a dense core, and a disc crossed by two wires are not."""
    mm = 0.16
    image = _noisy_field((400, 800))
    rows, cols = np.indices(image.shape)
    centres = {"electrode": (100, 100), "nodule": (100, 300), "calcified": (100, 500), "wires": (300, 300)}
    for centre in centres.values():
        image += 0.08 * _disc_mask(image.shape, centre, 5 / mm)
    ring = np.abs(np.hypot(rows - 100, cols - 100) * mm - 2.0) <= 0.2
    image += 0.1 * ring
    image += 0.12 * np.exp(-((np.hypot(rows - 100, cols - 300) * mm) ** 2) / 8.0)
    image += 0.15 * _disc_mask(image.shape, centres["calcified"], 1.5 / mm)
    image += 0.1 * ((np.abs(cols - 290) <= 1) | (np.abs(cols - 310) <= 1))
    assert electrode_snap_near(image, 103, 97, mm)  # a round density a few pixels off the snap
    for kind in ("nodule", "calcified", "wires"):
        assert not electrode_snap_near(image, *centres[kind], mm), kind
    assert not electrode_snap_near(image, 100, 100 + 30 / mm, mm)  # 30 mm away


# --- anatomy ------------------------------------------------------------------------------------


def test_both_hemithoraces_of_a_normal_film_lie_in_its_drawn_lungs(normal_pa: tuple[DecodedImage, object]) -> None:
    image, film = normal_pa
    work = to_working(to_working(image.pixels, 512), ANATOMY_SIDE)
    frame = find_chest_frame(work, field_mask(work), frontal=True)
    assert frame is not None
    assert 0.4 < frame.midline_col / work.shape[1] < 0.6
    masks = zone_masks(film, work.shape, 1.0)  # type: ignore[arg-type]
    for side in ("image-left", "image-right"):
        hemithorax = frame.hemithoraces[side]
        assert hemithorax.sum() > 0.05 * work.size
        assert (hemithorax & masks.lungs).sum() > 0.85 * hemithorax.sum()
    assert (frame.hemithoraces["image-left"] & frame.hemithoraces["image-right"]).sum() == 0


@pytest.fixture(scope="module")
def rotated_ap() -> tuple[DecodedImage, object, ChestMeasurements]:
    """A normal AP film (ANON in the development set), rotated, with two ECG electrodes over its lungs."""
    return _measured("20200418154808640220")


def test_a_hazy_lung_core_does_not_leak_into_the_axilla_of_a_rotated_ap_film(
    rotated_ap: tuple[DecodedImage, object, ChestMeasurements],
) -> None:
    """Its patient-left lung is only found near the chest wall's own level: its core once grew along the
    axilla, and the hull took in the heart and the soft tissue beside the lung, a zone region outside
    the thorax."""
    image, film, measured = rotated_ap
    rows, cols = measured.anatomy.shape
    masks = zone_masks(film, (rows, cols), mm_per_pixel(image, rows))  # type: ignore[arg-type]
    right = measured.anatomy.hemithoraces == 2
    assert (right & ~masks.lungs).sum() < 0.4 * right.sum()  # 0.55 with the leak
    judged = judge_chest(measured, image, load_chest_reference())
    labels = resize_labels(judged.region_map.labels, (rows, cols))
    for region in judged.region_map.regions:
        assert classify_region(labels == region.label, masks) not in ("outside", "object"), region.location


def test_no_round_density_is_left_on_the_ecg_electrodes_of_a_real_film(
    rotated_ap: tuple[DecodedImage, object, ChestMeasurements],
) -> None:
    """Its electrode over the image-left lung was the film's strongest round density (a region, abnormality
    0.93); the snaps' rings leave both electrodes without a candidate, and the lungs keep theirs."""
    _, film, measured = rotated_ap
    rows, cols = measured.detail_shape
    electrodes = [z["box"] for z in film.zones if z.get("what") == "electrode"]  # type: ignore[attr-defined]
    assert len(electrodes) == 2
    for top, left, bottom, right in electrodes:
        on_it = [
            c
            for c in measured.candidates
            if top - 1 <= 100 * c.row / rows <= bottom + 1 and left - 1 <= 100 * c.col / cols <= right + 1
        ]
        assert not [c for c in on_it if c.radius_px * measured.detail_mm_per_px <= 10.0], (top, left)
    assert len(measured.candidates) >= 20


def _phantom_chest(*, consolidated_left_base: bool, textured_abdomen: bool) -> np.ndarray:
    """A 256 x 256 frontal chest phantom: body, spine, two lungs with rib shadows every 14 rows down to row
    200, abdomen below. Options: the image-left lung consolidates gradually from row 130 (as dense as the
    abdomen by row 190, its ribs still seen), and bowel gas gives the abdomen texture too."""
    rows, cols = np.mgrid[:256, :256]
    image = np.full((256, 256), 0.75)
    image[:, :12] = image[:, -12:] = 0.0
    spine = np.abs(cols - 128) < 14
    image[spine] = 0.9
    ribs = 0.08 * np.sign(np.sin(2 * np.pi * rows / 14.0))
    abdomen = (rows >= 200) & ~spine & (cols > 12) & (cols < 244)
    image[abdomen] = 0.85
    if textured_abdomen:
        image[abdomen] += ribs[abdomen]
    for middle in (75, 181):
        lung = (((cols - middle) / 45.0) ** 2 + ((rows - 120) / 95.0) ** 2 < 1) & (rows > 40) & (rows < 200)
        level = 0.3
        if consolidated_left_base and middle < 128:
            level = 0.3 + 0.62 * np.clip((rows[lung] - 130) / 60.0, 0.0, 1.0)
        image[lung] = level + ribs[lung]
    return np.clip(ndimage.gaussian_filter(image, 1.0), 0.0, 1.0)


@pytest.mark.parametrize(("consolidated", "textured_abdomen"), [(True, False), (False, True)])
def test_only_a_base_without_the_diaphragms_step_is_followed_down_by_its_texture(
    consolidated: bool, textured_abdomen: bool
) -> None:
    """A consolidated base reaches the abdomen's level with no step and is followed down its ribs to the
    lung's end, its zones' thirds measured to where it was; a base where aerated lung meets the diaphragm
    is not followed into a textured abdomen."""
    work = _phantom_chest(consolidated_left_base=consolidated, textured_abdomen=textured_abdomen)
    frame = find_chest_frame(work, field_mask(work), frontal=True)
    assert frame is not None
    for side, mask in frame.hemithoraces.items():
        lowest = int(np.flatnonzero(mask.any(axis=1))[-1])
        if consolidated and side == "image-left":
            assert lowest >= 195
            assert frame.zone_bottoms[side] < lowest - 10
        else:
            assert 195 <= lowest <= frame.zone_bottoms[side] + 1 <= 205


def test_an_opaque_base_is_followed_down_by_its_texture_and_its_disease_flagged() -> None:
    """An AP film whose image-left lung base is consolidated down to 92 % of the film: with no step from
    aerated lung to the diaphragm there, the hemithorax stopped at 70 % and the basal consolidation, the
    film's most obvious disease, was outside every region. Followed down by its rib and vessel texture,
    the lower zone takes it in, while the zones' thirds stay where the aerated lung puts them."""
    image, film, measured = _measured("20200324165957625920")
    anatomy = measured.anatomy
    rows, cols = anatomy.shape
    left = np.flatnonzero((anatomy.hemithoraces == 1).any(axis=1))
    assert left[-1] > 0.8 * rows
    assert anatomy.zone_bottoms["image-left"] < 0.75 * rows  # the thirds: measured to the old base
    judged = judge_chest(measured, image, load_chest_reference())
    labels = resize_labels(judged.region_map.labels, (rows, cols))
    (box,) = [z["box"] for z in film.zones if z["kind"] == "disease" and z["box"][1] < 50]  # type: ignore[attr-defined]
    top, left_col, bottom, right_col = (int(v * n / 100) for v, n in zip(box, (rows, cols, rows, cols), strict=True))
    below_old_base = np.zeros((rows, cols), dtype=bool)
    below_old_base[max(top, int(0.72 * rows)) : bottom, left_col:right_col] = True
    assert any(
        (labels == r.label)[below_old_base].sum() > 0.2 * below_old_base.sum() for r in judged.region_map.regions
    )


def test_a_base_that_meets_its_diaphragm_is_not_followed_into_the_gas_below() -> None:
    """A normal PA film with gas in the stomach under its left hemidiaphragm: gas is textured too, but the
    aerated lung meets the diaphragm with a step, so that base stays where it is."""
    _, film, measured = _measured("2020032712415994976")
    anatomy = measured.anatomy
    masks = zone_masks(film, anatomy.shape, 1.0)  # type: ignore[arg-type]
    drawn_bottom = np.flatnonzero(masks.lungs.any(axis=1))[-1]
    for number, side in ((1, "image-left"), (2, "image-right")):
        lowest = np.flatnonzero((anatomy.hemithoraces == number).any(axis=1))[-1]
        assert lowest <= anatomy.zone_bottoms[side] + 1
        assert lowest < drawn_bottom + 0.05 * anatomy.shape[0]


def test_a_lateral_view_or_a_film_without_two_lungs_is_not_a_frontal_chest() -> None:
    image = decode_film(shared_file("dicom/xray/dx_thorax_canine_fuji_mono1_8bit.dcm"))
    assert measure_chest(image, enhance(image, "wavelet").pixels) is None


def test_zone_thirds_are_measured_to_the_given_bottom_and_what_lies_below_joins_the_lower_zone() -> None:
    hemithoraces = np.zeros((100, 40), dtype=np.uint8)
    hemithoraces[10:70, 2:18] = 1
    hemithoraces[10:70, 22:38] = 2
    zones = pipeline_zone_masks(hemithoraces, {"image-left": 39})
    rows_of = {key: np.flatnonzero(mask.any(axis=1)) for key, mask in zones.items()}
    left = {key.zone: (int(r[0]), int(r[-1])) for key, r in rows_of.items() if key.side == "image-left"}
    right = {key.zone: (int(r[0]), int(r[-1])) for key, r in rows_of.items() if key.side == "image-right"}
    assert left == {"upper": (10, 19), "middle": (20, 29), "lower": (30, 69)}
    assert right == {"upper": (10, 29), "middle": (30, 49), "lower": (50, 69)}
    assert sum(int(m.sum()) for m in zones.values()) == int((hemithoraces > 0).sum())


@pytest.mark.parametrize(
    ("orientation", "expected"), [(("L", "F"), True), (("R", "F"), False), (("A", "F"), None), (None, None), ((), None)]
)
def test_which_side_is_the_patients_right(orientation: tuple[str, ...] | None, expected: bool | None) -> None:
    assert right_on_image_left(orientation) is expected


def test_location_words_in_the_patients_terms_or_the_images() -> None:
    assert location_words("image-left", ("lower",), True) == ("right lower zone", "right")
    assert location_words("image-left", ("middle", "lower"), False) == ("left middle and lower zones", "left")
    assert location_words("image-right", ("upper", "middle", "lower"), True) == ("left lung, all zones", "left")
    words, side = location_words("image-right", ("upper",), None)
    assert side is None
    assert words == "image right, upper zone (image side: patient orientation unknown)"


# --- judged against normal ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def opaque_right(normal_pa: tuple[DecodedImage, object]) -> tuple[DecodedImage, object]:
    """The normal film with the lung on the image's right made opaque (a white-out), drawn zones kept."""
    image, film = normal_pa
    rows, cols = image.pixels.shape
    (box,) = [z["box"] for z in film.zones if z.get("side") == "image-right"]  # type: ignore[attr-defined]
    top, left, bottom, right = (int(v * n / 100) for v, n in zip(box, (rows, cols, rows, cols), strict=True))
    pixels = image.pixels.copy()
    lung = pixels[top:bottom, left:right]
    pixels[top:bottom, left:right] = np.maximum(lung, np.percentile(image.pixels, 80))
    return replace(image, pixels=pixels, patient_orientation=("L", "F")), film


def test_a_normal_film_has_no_region_and_a_low_score(normal_pa: tuple[DecodedImage, object]) -> None:
    image, _ = normal_pa
    measured = measure_chest(image, enhance(image, "vst_wavelet").pixels)
    assert measured is not None
    judged = judge_chest(measured, image, load_chest_reference())
    assert judged.region_map.regions == ()
    assert judged.abnormality_score < 0.5


def test_an_opaque_hemithorax_is_one_region_covering_it(opaque_right: tuple[DecodedImage, object]) -> None:
    image, film = opaque_right
    measured = measure_chest(image, enhance(image, "vst_wavelet").pixels)
    assert measured is not None
    judged = judge_chest(measured, image, load_chest_reference())
    assert judged.abnormality_score > 0.9
    zones = [r for r in judged.region_map.regions if r.kind == "zone"]
    assert len(zones) == 1
    (region,) = zones
    # Patient Orientation L\F: the image's right is the patient's left.
    assert region.side == "left" and region.location.startswith("left")
    rows, cols = image.pixels.shape
    (box,) = [z["box"] for z in film.zones if z.get("side") == "image-right"]  # type: ignore[attr-defined]
    top, left, bottom, right = (int(v * n / 100) for v, n in zip(box, (rows, cols, rows, cols), strict=True))
    inside = judged.region_map.labels[top:bottom, left:right] == region.label
    assert inside.sum() > 0.35 * (bottom - top) * (right - left)  # most of the lung, not a sliver
    assert (judged.region_map.labels == region.label).sum() < 1.3 * inside.sum()


# --- the reference ------------------------------------------------------------------------------


def test_the_shipped_reference_loads_names_its_films_and_has_a_focal_model() -> None:
    reference = load_chest_reference()
    assert reference.n_films >= 2
    assert reference.focal_model is not None and reference.focal_model.positives > 50
    licences = [film.get("licence", "") for film in reference.films]
    assert all(licences), "every film of the shipped reference names its licence"
    assert reference.model_run.role == "reference"


def test_a_reference_round_trips_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    reference = load_chest_reference()
    path = tmp_path / "ref.json"
    revision = save_chest_reference(replace(reference, name="copy"), path)
    again = load_chest_reference(path)
    assert again.name == "copy" and again.revision == revision
    assert again.means == reference.means and again.focal_model == reference.focal_model
    payload = json.loads(path.read_text())
    payload["focal_model"]["feature_names"] = ["something_else"]
    path.write_text(json.dumps(payload))
    with pytest.raises(ModelError, match="built for other candidate features"):
        load_chest_reference(path)
    path.write_text("not json")
    with pytest.raises(ModelError, match="is not JSON"):
        load_chest_reference(path)


def test_evidence_and_abnormality_are_inverse() -> None:
    assert abnormality(FLAG_EVIDENCE) == pytest.approx(0.5)
    for score in (0.05, 0.3, 0.5, 0.9):
        assert abnormality(evidence_at(score)) == pytest.approx(score)


def _focal_model(coef: tuple[float, ...], intercept: float = 0.0) -> FocalModel:
    """A focal model of the shipped measurements, standardised to themselves."""
    return FocalModel(
        feature_names=MODEL_FEATURES,
        mean=(0.0,) * len(MODEL_FEATURES),
        scale=(1.0,) * len(MODEL_FEATURES),
        coef=coef,
        intercept=intercept,
        threshold=0.0,
        positives=1,
        negatives=1,
    )


def test_a_focal_model_refuses_candidates_of_another_layout() -> None:
    model = _focal_model((1.0,) * len(MODEL_FEATURES))
    with pytest.raises(ModelError, match=f"this version makes {len(FEATURE_NAMES)}"):
        model.log_odds(FocalCandidate(row=0, col=0, radius_px=1, strength=1, features=(1.0, 2.0)))
    assert FocalModel.from_dict(model.to_dict()) == model
    # A reference built by a version whose model read every measurement (before convergence).
    older = model.to_dict() | {"feature_names": list(FEATURE_NAMES[:-1]), "coef": [1.0] * (len(FEATURE_NAMES) - 1)}
    with pytest.raises(ModelError, match="build it again"):
        FocalModel.from_dict(older)


def test_the_focal_model_reads_its_measurements_by_name() -> None:
    """Only the named measurements move the log-odds; the others may be anything."""
    model = _focal_model((2.0,) + (0.0,) * (len(MODEL_FEATURES) - 1), intercept=0.5)
    def candidate(convergence: float, others: float) -> FocalCandidate:
        features = [others] * len(FEATURE_NAMES)
        features[FEATURE_NAMES.index(MODEL_FEATURES[0])] = convergence
        return FocalCandidate(row=0, col=0, radius_px=1, strength=1, features=tuple(features))

    assert model.log_odds(candidate(0.9, 0.0)) == pytest.approx(2.3)
    assert model.log_odds(candidate(0.9, 50.0)) == pytest.approx(2.3)


def test_a_blob_stronger_than_the_normal_films_is_flagged_whatever_the_model_says() -> None:
    doubtful = _focal_model((0.0,) * len(MODEL_FEATURES), intercept=-3.0)
    reference = replace(load_chest_reference(), focal_model=doubtful, focal_threshold=4.0, focal_global_threshold=7.0)
    features = (0.0,) * len(FEATURE_NAMES)
    strong = FocalCandidate(row=0, col=0, radius_px=5, strength=6.0, global_strength=1.0, features=features)
    usual = FocalCandidate(row=0, col=0, radius_px=5, strength=3.0, global_strength=6.0, features=features)
    assert focal_evidence(strong, reference) == pytest.approx(FLAG_EVIDENCE * 6.0 / 4.0)
    # Below the normal films' strongest blob the model alone decides: log-odds 3 under its threshold.
    assert focal_evidence(usual, reference) == pytest.approx(FLAG_EVIDENCE - 3.0)


def test_the_chest_analysis_runs_without_the_shared_data() -> None:
    """pydicom-data's WG04 chest CR: a frontal chest film that installs with the project."""
    from miemss_node.pipeline.decode import decode_dataset, read_dicom_file
    from miemss_node.pipeline.runner import analyse_image
    from tests.support.paths import wg04_chest_cr

    (image,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    analysis = analyse_image(image, PipelineSettings())
    assert analysis.method == "chest"
    assert analysis.anatomy is not None
    assert (analysis.anatomy.hemithoraces == 1).any() and (analysis.anatomy.hemithoraces == 2).any()


def test_an_electrode_pasted_on_the_wg04_film_leaves_no_round_density_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom-data's WG04 chest CR (no shared data needed), with an electrode pasted over the image-left
    lung: an 11 mm disc and its snap's 4 mm ring. The disc alone is a round-density candidate; the ring
    takes it out."""
    from miemss_node.pipeline.decode import decode_dataset, read_dicom_file
    from tests.support.paths import wg04_chest_cr

    (image,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    clean = measure_chest(image, enhance(image, "vst_wavelet").pixels)
    assert clean is not None
    lung_rows, lung_cols = np.nonzero(clean.anatomy.hemithoraces == 1)
    rows, cols = image.pixels.shape[:2]
    centre = (
        int(np.median(lung_rows) * rows / clean.anatomy.shape[0]),
        int(np.median(lung_cols) * cols / clean.anatomy.shape[1]),
    )
    mm = mm_per_pixel(image, rows)
    distance = np.hypot(*(np.indices((rows, cols)) - np.array(centre)[:, None, None])) * mm
    span = float(np.ptp(image.pixels))
    electrode = span * (0.08 * (distance <= 5.5) + 0.12 * (np.abs(distance - 2.0) <= 0.25))
    pasted = replace(image, pixels=(image.pixels + electrode).astype(image.pixels.dtype))

    def candidates_on_it() -> int:
        measured = measure_chest(pasted, enhance(pasted, "vst_wavelet").pixels)
        assert measured is not None
        detail_rows, detail_cols = measured.detail_shape
        return sum(
            np.hypot(c.row * rows / detail_rows - centre[0], c.col * cols / detail_cols - centre[1]) * mm < 8.0
            for c in measured.candidates
        )

    from miemss_node.pipeline import chest

    with monkeypatch.context() as without_snap_test:
        without_snap_test.setattr(chest, "_off_electrodes", lambda candidates, *_: candidates)
        assert candidates_on_it() >= 1  # the disc is a round density ...
    assert candidates_on_it() == 0  # ... whose snap takes it out


def test_the_focal_regions_are_the_most_evident_round_densities_not_the_strongest() -> None:
    """Candidates come strongest first (the LoG); the focal model ranks them otherwise, and when more are
    flagged than ``max_focal_regions`` the most evident become the regions (WG04 chest CR)."""
    from miemss_node.pipeline.decode import decode_dataset, read_dicom_file
    from tests.support.paths import wg04_chest_cr

    (image,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    measured = measure_chest(image, enhance(image, "vst_wavelet").pixels)
    assert measured is not None
    reference = load_chest_reference()
    evidence = [focal_evidence(candidate, reference) for candidate in measured.candidates]
    most_evident = sorted(range(len(evidence)), key=lambda i: -evidence[i])[:2]
    assert sorted(most_evident) != [0, 1], "this film's two strongest candidates are also its most evident"
    # No zone region (threshold 0.99), every candidate flagged (focal threshold 0.01), two regions.
    judged = judge_chest(measured, image, reference, threshold=0.99, focal_threshold=0.01, max_focal_regions=2)
    focal = [region for region in judged.region_map.regions if region.kind == "focal"]
    assert len(focal) == 2
    rows, cols = image.pixels.shape[:2]
    detail_rows, detail_cols = measured.detail_shape
    for region in focal:
        nearest = min(
            range(len(measured.candidates)),
            key=lambda i: (
                (measured.candidates[i].row * rows / detail_rows - region.centroid[0]) ** 2
                + (measured.candidates[i].col * cols / detail_cols - region.centroid[1]) ** 2
            ),
        )
        assert nearest in most_evident, (nearest, most_evident)


def test_a_round_densitys_outline_is_the_mass_not_the_small_blob_at_its_edge() -> None:
    """A 24 mm mass with a small blob of texture near its edge (a quarter of its contrast): from the small
    blob, where the candidate is found, the outline moves to the mass's middle and takes its size. A 10 mm
    nodule keeps a nodule's outline. (A blob of texture as contrasted as a faint mass keeps the outline:
    on the inserted nodules of contrast 0.06 the outlines are about as small as the candidates.)"""
    mm = 0.8
    rows, cols = np.indices((200, 200), dtype=np.float32)
    distance = np.hypot(rows - 100, cols - 100) * mm
    everywhere = np.ones((200, 200), dtype=bool)
    image = _noisy_field((200, 200)) + 0.12 * np.sqrt(np.clip(1 - (distance / 12.0) ** 2, 0, None))
    image[_disc_mask(image.shape, (100, 112), 4)] += 0.03  # a small blob 10 mm from its middle
    row, col, radius = blob_extent(scale_responses(image, mm), everywhere, 100, 112, mm)
    assert np.hypot(row - 100, col - 100) * mm <= 2.0, (row, col)
    assert 10.0 <= radius * mm <= 14.0, radius * mm
    nodule = _noisy_field((200, 200)) + 0.12 * np.sqrt(np.clip(1 - (distance / 5.0) ** 2, 0, None))
    row, col, radius = blob_extent(scale_responses(nodule, mm), everywhere, 102, 103, mm)
    assert np.hypot(row - 100, col - 100) * mm <= 2.0 and radius * mm <= 7.0, (row, col, radius * mm)


def test_check_config_refuses_a_missing_or_corrupt_chest_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from miemss_node.cli import main

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "something else"}', encoding="utf-8")
    for reference in ("missing.json", "corrupt.json"):
        config = tmp_path / "config.toml"
        config.write_text(
            f'[node]\nport = 0\nstorage_dir = "storage"\n[pipeline]\nchest_reference = "{reference}"\n'
            '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 11999\n',
            encoding="utf-8",
        )
        assert main(["check-config", "--config", str(config)]) == 2
        out = capsys.readouterr()
        assert "[pipeline] chest_reference" in out.out + out.err
        assert "miemss-node reference chest" in out.out + out.err


def test_the_round_density_hessian_is_scikit_images_to_the_last_bit() -> None:
    # Isotropy was learned on scikit-image's values (benchmarks/focal_features.py still compares models that
    # read it); ours must be the same.
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    rng = np.random.default_rng(0)
    for _ in range(50):
        window = rng.random((int(rng.integers(9, 50)), int(rng.integers(9, 50))))
        sigma = float(rng.uniform(1.0, 8.0))
        point = (int(rng.integers(0, window.shape[0])), int(rng.integers(0, window.shape[1])))
        elements = hessian_matrix(window, sigma=sigma, order="rc", use_gaussian_derivatives=False)
        expected = hessian_matrix_eigvals(elements)[:, point[0], point[1]]
        assert hessian_eigenvalues_at(window, sigma, point) == tuple(float(v) for v in expected)


def test_a_candidates_place_in_the_lung_is_measured_from_the_medial_edge_and_the_hilum() -> None:
    from miemss_node.pipeline.focal import place_in_lung

    lungs = np.zeros((100, 120), dtype=bool)
    lungs[10:90, 10:50] = True  # image-left hemithorax: medial edge at column 49
    lungs[10:90, 70:110] = True  # image-right: medial edge at column 70
    midline = 60.0
    medial, hilum = place_in_lung(lungs, 46, 48, midline)  # beside the left hilum (row 10 + 0.45 * 79)
    assert medial < 0.05 and hilum < 0.05
    lateral, far = place_in_lung(lungs, 15, 12, midline)  # the left apex, laterally
    assert lateral > 0.9 and far > 0.5
    right_medial, _ = place_in_lung(lungs, 50, 71, midline)
    assert right_medial < 0.05
    assert place_in_lung(lungs, 5, 30, midline) == (0.5, 1.0)  # a row without lung: no place to measure
