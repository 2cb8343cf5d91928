"""The IGP back-off of RFC 8405, for SPF runs and for a router's own LSAs.

A single failure must be acted on at once (the first event after a quiet
period gets `initial`), but a whole network coming up, or a link flapping,
must not make every router run SPF and originate for every LSA it hears:
on a 2-core machine shared by 200 Python forwarders that is the difference
between converging and melting down. So events close together get `short`,
a storm lasting longer than `time_to_learn` gets `long`, and `holddown` of
quiet returns to the initial delay.

Pure: fed with times, keeps no timers; the caller schedules its run at
`now + event(now)` when none is scheduled yet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

QUIET, SHORT_WAIT, LONG_WAIT = "quiet", "short_wait", "long_wait"
EPS = 1e-9  # float slack, as in routing's timers


@dataclass
class Backoff:
    """RFC 8405 section 5 state machine, with the timers kept as timestamps."""
    # Defaults for a service network, where registrations are frequent unrelated
    # events: a second of quiet (not RFC 8405's example of 10 s) ends a storm, so a
    # failure shortly after a registration still gets the initial delay.
    initial: float = 0.0
    short: float = 0.05
    long: float = 0.5
    time_to_learn: float = 0.5
    holddown: float = 1.0
    _first: Optional[float] = None  # first event of the current storm
    _last: Optional[float] = None   # latest event

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.short <= self.long:
            raise ValueError("need 0 <= initial <= short <= long")
        if self.time_to_learn < 0 or self.holddown <= 0:
            raise ValueError("time_to_learn must be >= 0 and holddown > 0")

    @classmethod
    def from_ms(cls, values: Sequence[int]) -> "Backoff":
        """[initial, short, long, time_to_learn, holddown] in milliseconds (the config form)."""
        if len(values) != 5:
            raise ValueError("a back-off is [initial, short, long, time_to_learn, holddown] in ms")
        return cls(*(v / 1000.0 for v in values))

    def state(self, now: float) -> str:
        if self._last is None or now - self._last + EPS >= self.holddown:
            return QUIET
        if now - self._first + EPS >= self.time_to_learn:
            return LONG_WAIT
        return SHORT_WAIT

    def event(self, now: float) -> float:
        """Record an event at `now`; the delay a run triggered by it should wait."""
        state = self.state(now)
        if state == QUIET:
            self._first = now
        self._last = now
        return {QUIET: self.initial, SHORT_WAIT: self.short, LONG_WAIT: self.long}[state]
