"""When to try again: a retry policy kept apart from the code that decides to retry."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter and a finite number of attempts."""

    max_attempts: int
    backoff_seconds: float
    max_backoff_seconds: float = 3600.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError("backoff seconds must not be negative")

    def should_retry(self, attempts_made: int) -> bool:
        """True while another attempt is allowed after ``attempts_made`` attempts."""
        return attempts_made < self.max_attempts

    def delay(self, attempts_made: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt, after ``attempts_made`` attempts (>= 1).

        Half the delay is fixed and half is jitter, so peers retrying together spread out.
        """
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** max(attempts_made - 1, 0))
        if not self.jitter:
            return ceiling
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
