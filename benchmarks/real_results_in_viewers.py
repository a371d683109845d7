"""Issue 11's must-show items on the results of the real pipeline (not the tests' drawn regions).

Runs ``miemss-node process`` (every result type) on every film of ``dicom/xray`` and
``dicom/transfer_syntaxes`` of the shared corpus, plus pydicom-data's RG1 chest CR (outside the
corpus), then checks what came out:

- dciodvfy's error lines per result type;
- every SR measurement group: does it hold a SCOORD (region groups) or not (score groups);
- the SEG and SR through OHIF's parsing code (tests/viewers/load_results.mjs, dcmjs and the
  Cornerstone3D adapters): the labelmap equals the SEG's own segments and ``mask.png``, and each
  region comes out as a drawn freehand ROI;
- the GSPS through dcmtk's ``dcmp2pgm``: exit status and the polylines it lists.

    MIEMSS_TEST_DATA=/work/shared/data .venv/bin/python benchmarks/real_results_in_viewers.py OUT_DIR [--reuse] [--only=NAME,...]

``--reuse`` keeps the outputs already in OUT_DIR (no new ``process`` runs); ``--only`` keeps the films
whose file name contains one of the comma-separated parts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration.test_viewers import VIEWERS, _node_command, _part10  # noqa: E402
from tests.support.paths import SHARED_DATA  # noqa: E402

FOLDERS = ("dicom/xray", "dicom/transfer_syntaxes")
MEASUREMENT_GROUP = "125007"


def films() -> list[Path]:
    found = sorted(p for folder in FOLDERS for p in (SHARED_DATA / folder).rglob("*.dcm"))
    return [Path(str(get_testdata_file("RG1_J2KI.dcm"))), *found]


def process(film: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv/bin/miemss-node"), "process", "--input", str(film), "--output", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )


def dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, timeout=120, check=False)
    text = (done.stdout + done.stderr).decode("latin-1")
    return [line for line in text.splitlines() if line.startswith("Error")]


def measurement_groups(sr: pydicom.Dataset) -> list[bool]:
    """For each measurement group of the SR: whether it holds a SCOORD anywhere inside."""

    def has_scoord(item: pydicom.Dataset) -> bool:
        return any(c.ValueType == "SCOORD" or has_scoord(c) for c in item.get("ContentSequence", []))

    found: list[bool] = []

    def walk(item: pydicom.Dataset) -> None:
        for child in item.get("ContentSequence", []):
            name = child.get("ConceptNameCodeSequence")
            if child.ValueType == "CONTAINER" and name and name[0].CodeValue == MEASUREMENT_GROUP:
                found.append(has_scoord(child))
            else:
                walk(child)

    walk(sr)
    return found


def seg_labels(seg: pydicom.Dataset) -> dict[int, np.ndarray]:
    """The SEG's label image per referenced source frame (1 for a single-frame source)."""
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    labels: dict[int, np.ndarray] = {}
    shared = seg.SharedFunctionalGroupsSequence[0]
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = group.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        derivation = group.get("DerivationImageSequence") or shared.DerivationImageSequence
        number = int(identification[0].ReferencedSegmentNumber)
        source = derivation[0].SourceImageSequence[0]
        frame = int(source.get("ReferencedFrameNumber", 1) or 1)
        label = labels.setdefault(frame, np.zeros(pixels.shape[1:], dtype=np.uint16))
        label[pixels[index] > 0] = number
    return labels


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    only = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]
    rows: dict[str, dict[str, object]] = {}
    cases: list[dict[str, Any]] = []
    errors_by_kind: Counter[str] = Counter()
    objects_by_kind: Counter[str] = Counter()
    for index, film in enumerate(films()):
        folder = out / f"film{index:02d}"
        if only and not any(part in film.name for part in only[0].split(",")):
            continue
        done = (subprocess.CompletedProcess([], 0, "", "") if "--reuse" in sys.argv and (folder / "findings.json").exists()
                else process(film, folder))
        row: dict[str, object] = {"film": str(film.relative_to(SHARED_DATA)) if SHARED_DATA in film.parents else film.name,
                                  "process_rc": done.returncode}
        rows[folder.name] = row
        if done.returncode != 0:
            row["process_error"] = (done.stdout + done.stderr)[-400:]
            continue
        findings = json.loads((folder / "findings.json").read_text())
        row["regions"] = sum(len(image["regions"]) for image in findings["images"])
        row["dciodvfy_errors"] = {}
        for path in sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("part10_")):
            kind = path.name.split("_")[0]
            errors = dciodvfy_errors(path)
            objects_by_kind[kind] += 1
            errors_by_kind[kind] += len(errors)
            row["dciodvfy_errors"][kind] = errors  # type: ignore[index]
        srs = sorted(folder.glob("SR_*.dcm"))
        segs = sorted(folder.glob("SEG_*.dcm"))
        gsps = sorted(folder.glob("GSPS_*.dcm"))
        groups = [flag for sr in srs for flag in measurement_groups(pydicom.dcmread(sr))]
        row["sr_groups"] = len(groups)
        row["sr_groups_with_scoord"] = sum(groups)
        source = pydicom.dcmread(film, force=True)
        frames = int(source.get("NumberOfFrames", 1) or 1)
        viewer_source = _part10(film, folder)
        cases.append({
            "name": folder.name,
            "sources": [str(viewer_source)],
            "frames": {str(viewer_source): frames} if frames > 1 else {},
            "segs": [str(p) for p in segs],
            "srs": [str(p) for p in srs],
            "labelmapDir": str(folder),
        })
        row["segs"] = len(segs)
        if gsps:
            render = subprocess.run(
                ["dcmp2pgm", "-v", "-p", str(gsps[0]), str(film), "render.pgm"],
                cwd=folder, capture_output=True, text=True, timeout=300, check=False,
            )
            row["dcmp2pgm_rc"] = render.returncode
            row["dcmp2pgm_polylines"] = (render.stdout + render.stderr).count("coordinates:")
            row["dcmp2pgm_overlay"] = (folder / "ovl_0101.pgm").exists()
            if render.returncode != 0:
                row["dcmp2pgm_error"] = (render.stdout + render.stderr).strip().splitlines()[-1:]
        print(json.dumps(row), flush=True)

    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"cases": cases}))
    node = subprocess.run(
        [*_node_command(), str(VIEWERS / "load_results.mjs"), str(manifest), str(out / "viewer.json")],
        capture_output=True, text=True, timeout=900, cwd=VIEWERS, check=False,
    )
    print("node rc", node.returncode, node.stderr[-2000:])
    loaded = {case["name"]: case for case in json.loads((out / "viewer.json").read_text())["cases"]}
    for case in cases:
        folder = Path(case["labelmapDir"])
        result = loaded[case["name"]]
        row = rows[case["name"]]
        verdicts = []
        for seg_path, seg in zip(case["segs"], result["segs"], strict=True):
            if "error" in seg:
                verdicts.append("ERROR " + seg["error"].splitlines()[0])
                continue
            expected = seg_labels(pydicom.dcmread(seg_path))
            mask_files = sorted(folder.glob("mask*.png"))
            equal_seg = equal_mask = True
            for labelmap in seg["labelmaps"]:
                position = result["imageIds"].index(labelmap["imageId"])
                dtype = {1: np.uint8, 2: np.uint16}[labelmap["bytesPerPixel"]]
                got = np.fromfile(labelmap["file"], dtype=dtype).reshape(labelmap["rows"], labelmap["columns"])
                equal_seg &= np.array_equal(got, expected.get(position + 1, np.zeros_like(got)))
                # process writes mask.png per analysed image (mask_frameNNN.png for frames)
                mask_file = mask_files[position] if len(mask_files) > 1 else mask_files[0]
                equal_mask &= np.array_equal(got > 0, np.asarray(Image.open(mask_file)) > 0)
            verdicts.append(f"labelmaps={len(seg['labelmaps'])} equal_to_seg={equal_seg} equal_to_mask_png={equal_mask}")
        row["cornerstone_seg"] = verdicts
        row["cornerstone_sr"] = [
            ("ERROR " + sr["error"].splitlines()[0]) if "error" in sr else
            f"rois={sum(m['toolType'] == 'PlanarFreehandROI' and m['closed'] and len(m['imagePoints']) >= 3 for m in sr['measurements'])}"
            for sr in result["srs"]
        ]
    (out / "rows.json").write_text(json.dumps(list(rows.values()), indent=1))
    for row in rows.values():
        print(json.dumps({k: v for k, v in row.items() if k != "dciodvfy_errors"}))
    print("objects by kind", dict(objects_by_kind))
    print("dciodvfy error lines by kind", dict(errors_by_kind))


if __name__ == "__main__":
    main()
