"""Douglas-Peucker simplification of a polyline: scikit-image 0.26's ``approximate_polygon``, step
for step (``tests/unit/test_polygon.py`` checks it point for point).

Importing scikit-image's polygon module imports ``scipy.signal`` and through it ``scipy.stats`` (about
0.5 s of a cold start) for a function that needs numpy alone.
"""

from __future__ import annotations

import numpy as np


def approximate_polygon(coords: np.ndarray, tolerance: float) -> np.ndarray:
    """The subset of ``coords`` (n x 2, row and column) that stays within ``tolerance`` of them.

    A point's distance is to the segment between the kept points around it: perpendicular where it
    projects inside the segment, to the nearer end otherwise. The first and last points are kept.
    """
    if tolerance <= 0:
        return coords
    chain = np.zeros(coords.shape[0], dtype=bool)
    distances = np.zeros(coords.shape[0])
    chain[0] = chain[-1] = True
    pending = [(0, coords.shape[0] - 1)]
    while pending:
        start, end = pending.pop()
        r0, c0 = coords[start, :]
        r1, c1 = coords[end, :]
        dr, dc = r1 - r0, c1 - c0
        angle = -np.arctan2(dr, dc)
        offset = c0 * np.sin(angle) + r0 * np.cos(angle)
        between = coords[start + 1 : end, :]
        segment = distances[start + 1 : end]
        dr0, dc0 = between[:, 0] - r0, between[:, 1] - c0
        dr1, dc1 = between[:, 0] - r1, between[:, 1] - c1
        inside = np.logical_and(dr0 * dr + dc0 * dc > 0, -dr1 * dr - dc1 * dc > 0)
        outside = np.logical_not(inside)
        segment[inside] = np.abs(between[inside, 0] * np.cos(angle) + between[inside, 1] * np.sin(angle) - offset)
        segment[outside] = np.minimum(
            np.sqrt(dc0[outside] ** 2 + dr0[outside] ** 2), np.sqrt(dc1[outside] ** 2 + dr1[outside] ** 2)
        )
        if np.any(segment > tolerance):
            farthest = start + int(np.argmax(segment)) + 1
            pending.append((farthest, end))
            pending.append((start, farthest))
            chain[farthest] = True
    return coords[chain, :]
