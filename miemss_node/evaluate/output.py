"""Evaluation results as a terminal table, a JSON file and a PNG plot (drawn with Pillow)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from miemss_node.evaluate.froc import CANDIDATE_FOCAL_REGIONS
from miemss_node.evaluate.synthetic import DETECTORS, SyntheticResult, group_key, summarise

#: Bar colours of the detectors in the plot.
COLOURS = {"per_image": (31, 119, 180), "reference": (44, 160, 44), "zscore": (214, 39, 40)}


def _number(value: object, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def _groups(rows: list[dict[str, object]]) -> list[tuple[str, float]]:
    """The (kind, contrast) groups of the summary rows, films without lesions first."""
    keys = {group_key(row)[1:] for row in rows}
    return sorted(keys, key=lambda key: (key[0] != "none", key[0], key[1]))


def synthetic_table(result: SyntheticResult) -> str:
    """Dice, IoU, per-lesion sensitivity and FP regions per image, by kind and contrast, per detector."""
    rows = summarise(result.runs)
    detectors = [d for d in DETECTORS if any(r["detector"] == d for r in rows)]
    header = f"{'lesion':<8} {'contrast':>8} " + " | ".join(f"{d + ': Dice  IoU  Sens FP/im Top5':<35}" for d in detectors)
    lines = [
        f"Synthetic lesions in {len(result.images)} image(s); reference model: {result.reference}",
        header,
        "-" * len(header),
    ]
    keys = _groups(rows)
    for kind, contrast in keys:
        cells = []
        for detector in detectors:
            match = [r for r in rows if (r["detector"], r["kind"], r["contrast"]) == (detector, kind, contrast)]
            if not match:
                cells.append(f"{'':<35}")
                continue
            row = match[0]
            cells.append(
                f"{' ' * (len(detector) + 1)} {_number(row['dice']):>5} {_number(row['iou']):>4} "
                f"{_number(row['sensitivity']):>4} {_number(row['fp_per_image'], 1):>5} {_number(row['top5_rate']):>4}".ljust(35)
            )
        lines.append(f"{kind:<8} {contrast:>8.2f} " + " | ".join(cells))
    lines.append("(lesion 'none': the films without lesions; FP/im there is false-positive regions per normal film)")
    lines.append(
        "(Sens: lesions overlapped by a flagged region at the configured threshold; Top5: lesions whose best patch"
        " is in the image's top 5 % of scores, a threshold-free ranking measure)"
    )
    return "\n".join(lines)


def enhancement_table(result: SyntheticResult) -> str:
    """PSNR/SSIM of the enhancement against the clean image, noisy input beside it."""
    lines = [f"{'image':<40} {'method':<12} {'noisy PSNR':>10} {'SSIM':>6} {'enhanced PSNR':>13} {'SSIM':>6}"]
    for record in result.enhancement:
        lines.append(
            f"{record.image[:40]:<40} {record.method:<12} {record.noisy_psnr_db:10.2f} {record.noisy_ssim:6.3f} "
            f"{record.enhanced_psnr_db:13.2f} {record.enhanced_ssim:6.3f}"
        )
    return "\n".join(lines)


def pairs_table(records: Sequence[dict[str, Any]]) -> str:
    """Dice, IoU, sensitivity and FP regions for user image + mask pairs, per detector."""
    lines = [f"{'image':<36} {'detector':<10} {'Dice':>5} {'IoU':>5} {'hits':>6} {'FP':>4}"]
    for record in records:
        lines.append(
            f"{str(record['image'])[:36]:<36} {record['detector']:<10} {_number(record['dice']):>5} "
            f"{_number(record['iou']):>5} {record['hits']:>3}/{record['lesions']:<2} {record['false_positives']:>4}"
        )
    return "\n".join(lines)


def write_json(
    path: Path,
    result: SyntheticResult | None,
    pairs: Sequence[dict[str, Any]] = (),
    real: dict[str, Any] | None = None,
) -> None:
    """Write the summaries, the per-run records and the enhancement measurements as JSON."""
    payload: dict[str, Any] = {"pairs": list(pairs), **({"real_films": real} if real else {})}
    if result is not None:
        payload.update(
            {
                "reference": result.reference,
                "seconds": round(result.seconds, 2),
                "images": result.images,
                "summary": summarise(result.runs),
                "enhancement": [asdict(r) for r in result.enhancement],
                "runs": [asdict(r) for r in result.runs],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def plot_png(path: Path, result: SyntheticResult) -> None:
    """Three bar panels (sensitivity, Dice, FP regions per image) by lesion kind and contrast, per detector."""
    rows = summarise(result.runs)
    detectors = [d for d in DETECTORS if any(r["detector"] == d for r in rows)]
    groups = _groups(rows)
    panels = (
        ("per-lesion sensitivity", "sensitivity", 1.0),
        ("Dice", "dice", 1.0),
        ("FP regions / image", "fp_per_image", None),
    )
    width, panel_height, margin = 110 + 70 * len(groups), 220, 40
    image = Image.new("RGB", (width, margin + len(panels) * (panel_height + margin) + 30), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((10, 8), f"Synthetic lesions, {len(result.images)} image(s); reference: {result.reference}", fill="black", font=font)
    for index, (title, key, top) in enumerate(panels):
        y0 = margin + index * (panel_height + margin)
        values = [r[key] for r in rows if r[key] is not None]
        scale_top = top if top is not None else max([1.0, *[float(v) for v in values]])  # type: ignore[arg-type]
        draw.text((10, y0 - 14), f"{title} (axis 0..{scale_top:g})", fill="black", font=font)
        draw.line((90, y0, 90, y0 + panel_height), fill="black")
        draw.line((90, y0 + panel_height, width - 10, y0 + panel_height), fill="black")
        for g, (kind, contrast) in enumerate(groups):
            x0 = 100 + 70 * g
            label = "normal" if kind == "none" else f"{kind[:3]} {contrast:.2f}"
            draw.text((x0, y0 + panel_height + 3), label, fill="black", font=font)
            for d, detector in enumerate(detectors):
                match = [r for r in rows if (r["detector"], r["kind"], r["contrast"]) == (detector, kind, contrast)]
                value = match[0][key] if match else None
                if value is None:
                    continue
                bar = int(panel_height * min(float(value) / scale_top, 1.0))  # type: ignore[arg-type]
                x = x0 + 18 * d
                draw.rectangle((x, y0 + panel_height - bar, x + 15, y0 + panel_height), fill=COLOURS.get(detector, (0, 0, 0)))
    legend_y = image.height - 22
    for d, detector in enumerate(detectors):
        x = 10 + 140 * d
        draw.rectangle((x, legend_y, x + 12, legend_y + 12), fill=COLOURS.get(detector, (0, 0, 0)))
        draw.text((x + 18, legend_y), detector, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def real_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Per split: regions on objects/outside, abnormal films (and disease zones) with a region on the
    disease, regions per normal film, how much of the drawn lungs the hemithoraces cover, the statements
    about lines and devices, and the AUC (with its bootstrap 95 % interval) overall and per view."""
    lines = []
    for split, summary in summaries.items():
        lines.append(f"  [{split}] {summary['films']} film(s); regions by class: {summary['regions_by_class']}")
        lines.append(f"    regions on objects or outside the thorax: {summary['regions_on_objects_or_outside']}")
        if summary["abnormal_films"]:
            lines.append(
                f"    abnormal films with a region on the disease: {summary['abnormal_with_region_on_disease']}"
                f" of {summary['abnormal_films']}; drawn disease zones with a region: "
                f"{summary['disease_zones_with_a_region']} of {summary['disease_zones']}"
            )
        if summary["normal_films"]:
            lines.append(
                f"    regions per normal film: {summary['regions_per_normal_film']}"
                f" ({summary['normal_films_with_more_than_one_region']} with more than one)"
            )
        if summary.get("lungs_covered"):
            covered = summary["lungs_covered"]
            lines.append(
                f"    drawn lungs' interiors inside the hemithoraces found: median {covered['median']:.2f}, "
                f"lowest {covered['lowest']:.2f}"
            )
        for statement, counts in summary.get("device_statements", {}).items():
            if any(counts.values()):
                lines.append(
                    f"    said {statement!r}: on {counts['said_and_drawn']} film(s) where drawn, "
                    f"{counts['said_not_drawn']} where not; not said on {counts['drawn_not_said']} where drawn"
                )
        for key in sorted(k for k in summary if k.startswith("auc")):
            auc = summary[key]
            if auc["auc"] is None:
                continue
            view = key[4:] or "all views"
            lines.append(
                f"    AUC ({view}): {auc['auc']:.2f} [95 % {auc['low']:.2f}-{auc['high']:.2f}], "
                f"{auc['positives']} abnormal vs {auc['negatives']} normal"
            )
    return "\n".join(lines)


def froc_table(rows: Sequence[dict[str, Any]], plan: Any) -> str:
    """Sensitivity at 0.5/1/2 false-positive regions per normal film, and Dice, per contrast."""
    lines = [
        f"  nodules {plan.diameter_range_mm[0]:.0f}-{plan.diameter_range_mm[1]:.0f} mm, {plan.lesions_per_film} per film, "
        f"{plan.trials} trial(s) per contrast",
        f"  {'contrast':>8} {'lesions':>7} {'sens@0.5FP':>10} {'sens@1FP':>9} {'sens@2FP':>9} {'Dice':>6}",
    ]
    for row in rows:
        lines.append(
            f"  {row['contrast']:8.2f} {row['lesions']:7d} {_number(row['sensitivity_at_0.5_fp']):>10} "
            f"{_number(row['sensitivity_at_1_fp']):>9} {_number(row['sensitivity_at_2_fp']):>9} {_number(row['dice']):>6}"
        )
    lines.append(
        "  where they were missed: centred outside the lungs found; hit by no region (of the zones and each run's "
        f"{CANDIDATE_FOCAL_REGIONS} strongest round densities); sensitivity at 1 FP per normal film by diameter"
    )
    for row in rows:
        bands = ", ".join(f"{band} {_number(value)}" for band, value in row["sensitivity_at_1_fp_by_diameter"].items())
        outside = row["lesions_outside_found_lungs"]
        lines.append(
            f"  {row['contrast']:8.2f} {'?' if outside is None else outside} of {row['lesions']} outside, "
            f"{row['lesions_without_a_region']} hit by no region; {bands}"
        )
    return "\n".join(lines)
