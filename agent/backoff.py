"""Reconnect delays: exponential backoff with full jitter and a cap.

Full jitter (a uniform draw from [0, min(cap, base * 2**attempt)]) spreads the reconnects of a fleet
that lost its server at the same moment over the whole window, instead of herding them.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self, base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next_delay_s(self, floor_s: float = 0.0) -> float:
        """The next delay; ``floor_s`` is a delay the server asked for (retry-after-ms), which
        the jitter is added to, so a fleet told "5 s" still does not come back all at once."""
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return floor_s + self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
