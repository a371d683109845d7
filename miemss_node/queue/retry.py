"""When to try again: a retry policy kept apart from the code that decides to retry.

The worker and the sender share one error boundary: whatever an attempt raises ends that attempt,
its cause is recorded, and :meth:`RetryPolicy.decide` says what happens next.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class RetryDecision(enum.Enum):
    """What to do after an attempt failed."""

    #: Try again after a backoff; the attempt counts towards ``max_attempts``.
    RETRY = "retry"
    #: A resource is missing (disk space): try again after a backoff without using up an attempt,
    #: for as long as it takes.
    WAIT = "wait"
    #: Stop: retrying gives the same result, or the attempts are used up.
    GIVE_UP = "give_up"


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter, a finite number of attempts, and which errors are worth retrying."""

    max_attempts: int
    backoff_seconds: float
    max_backoff_seconds: float = 3600.0
    jitter: bool = True
    #: Errors that fail at once: the same input and code fail the same way again.
    permanent: tuple[type[BaseException], ...] = ()
    #: Errors that wait for a resource to come back, retried without using up attempts.
    waiting: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError("backoff seconds must not be negative")

    def should_retry(self, attempts_made: int) -> bool:
        """True while another attempt is allowed after ``attempts_made`` attempts."""
        return attempts_made < self.max_attempts

    def decide(self, error: BaseException, attempts_made: int) -> RetryDecision:
        """Classify a failed attempt: wait for a resource, retry, or give up.

        Parameters
        ----------
        error
            What the attempt raised.
        attempts_made
            Attempts counted so far, this one included.
        """
        if isinstance(error, self.waiting):
            return RetryDecision.WAIT
        if isinstance(error, self.permanent) or not self.should_retry(attempts_made):
            return RetryDecision.GIVE_UP
        return RetryDecision.RETRY

    def delay(self, attempts_made: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt, after ``attempts_made`` attempts (>= 1).

        Half the delay is fixed and half is jitter, so peers retrying together spread out.
        """
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** max(attempts_made - 1, 0))
        if not self.jitter:
            return ceiling
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


#: Errors of our own code that retrying cannot mend: the same code on the same input fails again.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    AttributeError,
    NameError,
    AssertionError,
    NotImplementedError,
)
