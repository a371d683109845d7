"""Before/after overlays of the field-of-view and lung-field masks on real chest films.

For each film, one PNG with two panels:

* before: every patch scored (no field of view), scores min-max scaled per image, as the first
  pipeline did; borders, collimation edges and burned-in letters are free to be flagged;
* after: the configured pipeline (field of view, lung fields on chest films, robust score scale);
  the green outline is the area that was scored.

Flagged regions are outlined in red. Run ``python benchmarks/fov_overlays.py /tmp/fov``; the images
are for looking at, not for committing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from miemss_node.config import load_config  # noqa: E402
from miemss_node.evaluate.synthetic import load_images  # noqa: E402
from miemss_node.pipeline.anomaly import score_patches  # noqa: E402
from miemss_node.pipeline.base import DecodedImage, PipelineSettings, RegionMap  # noqa: E402
from miemss_node.pipeline.enhance import enhance  # noqa: E402
from miemss_node.pipeline.features import analysis_mask, patch_features, to_working  # noqa: E402
from miemss_node.pipeline.modality import settings_for_image  # noqa: E402
from miemss_node.pipeline.regions import find_regions  # noqa: E402

#: The real chest films of the shared corpus, relative to the repository.
CHEST_FILMS = (
    "../shared/data/dicom/xray/cr_chest_pa_philips_mono1_15bit_uncompressed.dcm",
    "../shared/data/dicom/xray/cr_chest_fuji_mono1_10bit_nometa_implicit.dcm",
    "../shared/data/dicom/xray/cr_chest_pa_siim_mono2_8bit_jpegbaseline.dcm",
    "../shared/data/images/nih_00000001_000_cardiomegaly_1024.png",
    "../shared/data/images/nih_00000002_000_nofinding_1024.png",
)

#: Side of each panel in the PNG, pixels.
PANEL = 768


def before_and_after(image: DecodedImage, settings: PipelineSettings) -> tuple[RegionMap, RegionMap, np.ndarray]:
    """Regions without and with the field of view, and the scored area (source size)."""
    chosen = settings_for_image(settings, image)
    enhanced = enhance(image, chosen.denoise_method)
    features = patch_features(enhanced, chosen)
    legacy = replace(chosen, score_scale="minmax", lung_field=False)
    everything = replace(features, valid=None)
    before = find_regions(score_patches(everything, legacy), everything, image, legacy)
    after = find_regions(score_patches(features, chosen), features, image, chosen)
    work = to_working(enhanced.pixels, chosen.analysis_max_side)
    area = analysis_mask(work, lungs=chosen.lung_field)
    rows = np.minimum(np.arange(image.pixels.shape[0]) * work.shape[0] // image.pixels.shape[0], work.shape[0] - 1)
    cols = np.minimum(np.arange(image.pixels.shape[1]) * work.shape[1] // image.pixels.shape[1], work.shape[1] - 1)
    return before, after, area[np.ix_(rows, cols)]


def panel(pixels: np.ndarray, regions: RegionMap, area: np.ndarray | None, title: str) -> Image.Image:
    """The film in grey, the scored area in green, flagged regions in red, and a title."""
    grey = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    thickness = max(1, max(pixels.shape) // 400)
    if area is not None:
        rgb[_outline(area, thickness)] = (0, 200, 0)
    rgb[_outline(regions.labels > 0, thickness)] = (255, 0, 0)
    picture = Image.fromarray(rgb)
    picture.thumbnail((PANEL, PANEL))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, picture.width, 14), fill=(0, 0, 0))
    draw.text((4, 2), f"{title}: {len(regions.regions)} region(s)", fill=(255, 255, 255))
    return picture


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=thickness)


def main(argv: list[str] | None = None) -> int:
    """Write one before/after PNG per chest film into the given folder and print the paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="folder for the PNGs")
    parser.add_argument("--images", type=Path, nargs="+", help="films (default: the shared chest films)")
    parser.add_argument("--config", type=Path, default=REPO / "config.toml", help="its [pipeline] is used")
    args = parser.parse_args(argv)
    settings = load_config(args.config).pipeline if args.config.is_file() else PipelineSettings()
    paths = args.images or [(REPO / relative).resolve() for relative in CHEST_FILMS]
    args.output.mkdir(parents=True, exist_ok=True)
    for item in load_images([p for p in paths if p.is_file()]):
        before, after, area = before_and_after(item.image, settings)
        left = panel(item.image.pixels, before, None, "before (no field of view, min-max)")
        right = panel(item.image.pixels, after, area, "after (field of view / lungs, robust)")
        sheet = Image.new("RGB", (left.width + right.width + 8, max(left.height, right.height)), "white")
        sheet.paste(left, (0, 0))
        sheet.paste(right, (left.width + 8, 0))
        target = args.output / f"{Path(item.name).stem}_fov.png"
        sheet.save(target)
        print(f"{target}: before {len(before.regions)} region(s), after {len(after.regions)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
