"""What reviewers' decisions say about the findings: precision per finding type and score band, and
an operating threshold proposed from the accepted and rejected findings (``evaluate --feedback``).

Precision here is the share of findings a reviewer accepted. A reviewer sees only what the node
flagged, so decisions say nothing about what it missed (sensitivity); raising the threshold trades
missed findings that nobody will see for fewer rejected ones. The score of a finding is its region's
maximum anomaly score (``Region.max_score``), on the scale of ``[pipeline] threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Edges of the score bands (the last band includes 1.0).
SCORE_BANDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

#: Default precision the proposed threshold aims for.
DEFAULT_TARGET_PRECISION = 0.8

#: Below this many decisions the proposal is printed with a caution.
FEW_DECISIONS = 30


@dataclass(frozen=True, kw_only=True)
class DecidedFinding:
    """One finding a reviewer decided on, as far as feedback needs it."""

    kind: str
    score: float
    accepted: bool


@dataclass(frozen=True, kw_only=True)
class PrecisionRow:
    """Precision of one group of findings, with a Wilson 95 % interval."""

    kind: str
    band: str
    decided: int
    accepted: int
    precision: float
    low: float
    high: float


@dataclass(frozen=True, kw_only=True)
class ThresholdProposal:
    """A proposed score threshold and what it would have kept of the decided findings."""

    threshold: float | None
    target_precision: float
    #: Precision and share of the accepted findings kept at the threshold (None without one).
    precision: float | None
    accepted_kept: float | None
    rejected_removed: float | None
    reason: str


def band_of(score: float) -> str:
    """The score band a score falls in, e.g. "0.60-0.70"."""
    edges = SCORE_BANDS
    for low, high in zip(edges, edges[1:], strict=False):
        if score < high or high == edges[-1]:
            return f"{low:.2f}-{high:.2f}"
    return f"{edges[-2]:.2f}-{edges[-1]:.2f}"


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (0, 1) when ``total`` is 0."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)


def _row(kind: str, band: str, group: Sequence[DecidedFinding]) -> PrecisionRow:
    accepted = sum(finding.accepted for finding in group)
    low, high = wilson_interval(accepted, len(group))
    return PrecisionRow(
        kind=kind,
        band=band,
        decided=len(group),
        accepted=accepted,
        precision=accepted / len(group),
        low=low,
        high=high,
    )


def precision_rows(findings: Sequence[DecidedFinding]) -> list[PrecisionRow]:
    """Precision over all findings, per finding type, and per type and score band ("all" = every one)."""
    rows = [_row("all", "all", findings)] if findings else []
    for kind in sorted({finding.kind for finding in findings}):
        of_kind = [finding for finding in findings if finding.kind == kind]
        rows.append(_row(kind, "all", of_kind))
        for band in sorted({band_of(finding.score) for finding in of_kind}):
            rows.append(_row(kind, band, [finding for finding in of_kind if band_of(finding.score) == band]))
    return rows


def propose_threshold(
    findings: Sequence[DecidedFinding], target_precision: float = DEFAULT_TARGET_PRECISION
) -> ThresholdProposal:
    """The lowest score threshold at which the findings kept reach ``target_precision``.

    The lowest such threshold keeps the most accepted findings. When no threshold reaches the
    target, the one with the highest precision is proposed (the lowest of equals), saying so.
    """
    accepted_total = sum(finding.accepted for finding in findings)
    rejected_total = len(findings) - accepted_total
    if not findings or accepted_total == 0:
        reason = "no decision recorded" if not findings else "no finding was accepted: no threshold keeps any"
        return ThresholdProposal(
            threshold=None,
            target_precision=target_precision,
            precision=None,
            accepted_kept=None,
            rejected_removed=None,
            reason=reason,
        )
    candidates = []
    for threshold in sorted({finding.score for finding in findings}):
        kept = [finding for finding in findings if finding.score >= threshold]
        accepted = sum(finding.accepted for finding in kept)
        if accepted:
            candidates.append((threshold, accepted / len(kept), accepted, len(kept) - accepted))
    reaching = [candidate for candidate in candidates if candidate[1] >= target_precision]
    if reaching:
        threshold, precision, accepted, rejected = reaching[0]
        reason = f"the lowest score at which the findings kept reach precision {target_precision:.2f}"
    else:
        threshold, precision, accepted, rejected = max(candidates, key=lambda c: (c[1], -c[0]))
        reason = f"no threshold reaches precision {target_precision:.2f}; this one gives the highest"
    return ThresholdProposal(
        threshold=threshold,
        target_precision=target_precision,
        precision=precision,
        accepted_kept=accepted / accepted_total,
        rejected_removed=1 - rejected / rejected_total if rejected_total else None,
        reason=reason,
    )


def feedback_table(rows: Sequence[PrecisionRow]) -> str:
    """The precision rows as a plain-text table."""
    lines = [f"  {'finding type':<12} {'score band':<11} {'decided':>7} {'accepted':>8} {'precision':>9}  95 % interval"]
    for row in rows:
        lines.append(
            f"  {row.kind:<12} {row.band:<11} {row.decided:>7} {row.accepted:>8} {row.precision:>9.2f}  "
            f"{row.low:.2f}-{row.high:.2f}"
        )
    return "\n".join(lines)


def proposal_text(proposal: ThresholdProposal, current: float, decided: int) -> str:
    """The proposed threshold in words, next to the configured one."""
    if proposal.threshold is None:
        return f"Proposed threshold: none ({proposal.reason}); [pipeline] threshold is {current:.2f}."
    removed = "" if proposal.rejected_removed is None else f", removes {proposal.rejected_removed:.0%} of the rejected"
    text = (
        f"Proposed threshold: {proposal.threshold:.2f} ({proposal.reason}): precision {proposal.precision:.2f}, "
        f"keeps {proposal.accepted_kept:.0%} of the accepted findings{removed}. "
        f"[pipeline] threshold is {current:.2f}."
    )
    if decided < FEW_DECISIONS:
        text += f" Caution: only {decided} decision(s); collect more before changing the threshold."
    return text
