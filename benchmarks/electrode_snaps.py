"""How often the ECG electrode snap test (``objects.electrode_snap_near``) finds the electrodes drawn in a
zone file, and how often it finds a snap where there is none.

For each electrode drawn (zone ``{"kind": "object", "what": "electrode"}``) the test runs at 16 places
spread over its box, as it would at a round density found there; a snap found at any of them counts.
Clip and edge-on electrodes have no ring facing the detector, so they are not expected to be found.
False snaps are counted at random places inside the drawn lungs, away from every drawn object.

Run ``python benchmarks/electrode_snaps.py --data-root ../shared/data`` (about a minute): it prints,
per split, the electrodes found and the false snaps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ZONES = REPO / "benchmarks" / "zones" / "shared_chest_films.json"


def main() -> None:
    """Print the electrodes found and the false snaps, per split of the zone file."""
    from miemss_node.evaluate.real import decode_film
    from miemss_node.evaluate.zones import load_zone_file, zone_masks
    from miemss_node.pipeline.chest import mm_per_pixel
    from miemss_node.pipeline.enhance import enhance
    from miemss_node.pipeline.objects import electrode_snap_near

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--zones", type=Path, default=ZONES)
    parser.add_argument("--random-places", type=int, default=40, help="per film")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    found: dict[str, list[tuple[str, bool]]] = {}
    false: dict[str, list[int]] = {}
    for film in load_zone_file(args.zones):
        image = decode_film(args.data_root / film.file, view=film.view)
        pixels = enhance(image, "vst_wavelet").pixels
        rows, cols = pixels.shape
        mm = mm_per_pixel(image, rows)
        drawn = np.zeros((rows, cols), dtype=bool)
        margin = int(np.ceil(10.0 / mm))
        for zone in film.zones:
            if zone.get("kind") != "object" or "box" not in zone:
                continue
            top, left, bottom, right = (float(v) / 100.0 for v in zone["box"])
            r0, r1 = int(top * rows), int(bottom * rows)
            c0, c1 = int(left * cols), int(right * cols)
            drawn[max(0, r0 - margin) : r1 + margin, max(0, c0 - margin) : c1 + margin] = True
            if zone.get("what") == "electrode":
                places = [(r, c) for r in np.linspace(r0, r1, 4) for c in np.linspace(c0, c1, 4)]
                hit = any(electrode_snap_near(pixels, r, c, mm) for r, c in places)
                found.setdefault(film.split, []).append((Path(film.file).name, hit))
        lungs = zone_masks(film, (rows, cols), mm).lungs & ~drawn
        rr, cc = np.nonzero(lungs)
        if rr.size:
            picked = rng.choice(rr.size, size=min(args.random_places, rr.size), replace=False)
            hits = sum(electrode_snap_near(pixels, rr[i], cc[i], mm) for i in picked)
            totals = false.setdefault(film.split, [0, 0])
            totals[0] += int(hits)
            totals[1] += len(picked)
    for split in sorted(set(found) | set(false)):
        electrodes = found.get(split, [])
        print(f"[{split}] electrodes drawn: {len(electrodes)}; snap found on {sum(h for _, h in electrodes)}")
        for name, hit in electrodes:
            print(f"    {'found' if hit else 'not found':9s}  {name}")
        wrong, places = false.get(split, [0, 0])
        print(f"  false snaps: {wrong} of {places} random places in the drawn lungs, away from drawn objects")


if __name__ == "__main__":
    main()
