"""Per-pathology AUC of a chest classifier on a hospital's own labelled films (``evaluate --labels``).

A labels CSV may carry, beside ``file`` and ``finding``, one column per pathology named as the
classifier names it (e.g. ``Effusion``, ``Pneumothorax``): 1 where the film shows it, 0 where it does
not, empty where unknown. For each such column the AUC of the classifier's probability is measured, with
a bootstrap 95 % interval (the same as the abnormality score's, :func:`~miemss_node.evaluate.real.auc_with_interval`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from miemss_node.evaluate.real import FilmResult, auc_with_interval

#: Columns of a labels CSV that are not pathologies.
RESERVED_COLUMNS = frozenset({"file", "finding", "label", "view", "split"})
#: Values of a pathology column meaning present, and absent.
PRESENT = frozenset({"1", "1.0", "yes", "true", "positive"})
ABSENT = frozenset({"0", "0.0", "no", "false", "negative"})


def pathology_labels(path: Path) -> dict[str, dict[str, bool]]:
    """Per file, the pathology columns of a labels CSV that say present (True) or absent (False)."""
    labels: dict[str, dict[str, bool]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            known = {}
            for column, value in row.items():
                text = (value or "").strip().lower()
                if column is None or column.strip().lower() in RESERVED_COLUMNS or not text:
                    continue
                if text in PRESENT or text in ABSENT:
                    known[column.strip()] = text in PRESENT
            labels[str(row["file"])] = known
    return labels


def pathology_aucs(results: Sequence[FilmResult], labels: dict[str, dict[str, bool]], *, seed: int = 0) -> dict[str, Any]:
    """AUC per pathology column that the classifier also outputs (films it ran on, with a 0 or 1 there)."""
    columns = sorted({column for film in labels.values() for column in film})
    out: dict[str, Any] = {}
    for column in columns:
        positives: list[float] = []
        negatives: list[float] = []
        for result in results:
            known = labels.get(result.file, {})
            if column not in known or column not in result.pathologies:
                continue
            (positives if known[column] else negatives).append(result.pathologies[column])
        if positives or negatives:
            out[column] = auc_with_interval(positives, negatives, seed)
    return out


def pathology_table(aucs: dict[str, Any]) -> str:
    """One line per pathology: AUC, interval and counts."""
    lines = []
    for column, auc in aucs.items():
        if auc["auc"] is None:
            lines.append(f"    {column}: no AUC ({auc['positives']} with, {auc['negatives']} without)")
        else:
            lines.append(
                f"    {column}: AUC {auc['auc']:.2f} [95 % {auc['low']:.2f}-{auc['high']:.2f}], "
                f"{auc['positives']} with vs {auc['negatives']} without"
            )
    return "\n".join(lines) or "    no pathology column matches the classifier's labels"
