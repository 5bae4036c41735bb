"""Per-subscriber bandwidth: one budget for everything a subscriber receives, shared into layers.

The budget is the subscriber's own estimate of its link: the REMB it sends (its receiver-side
estimate from abs-send-time, which we re-stamp on every packet), lowered when its receiver reports
show heavy loss. `allocate` gives every stream the lowest layer first (nothing is ever paused: a
stream that does not fit still gets its lowest layer), then raises the streams one layer at a time,
each in turn, while the sum fits: a thumbnail and a full tile share a thin link fairly instead of
one starving the other. Streams that cannot be switched (no simulcast) take their bitrate off the
budget first.

Changes are asymmetric (DESIGN §6.1): a stream goes down at the first allocation that finds a
shortage (allocations run every ALLOCATE_SECONDS, well within the 2 s the contract allows), and up
only once the budget has allowed the higher layer for UP_HOLD_SECONDS without a break, which keeps
a noisy estimate from flapping layers (each switch costs a keyframe).
"""

from __future__ import annotations

QUALITIES = ("low", "medium", "high")  # a subscribe item's `quality`: the highest layer allowed
ALLOCATE_SECONDS = 0.5  # how often a subscriber's layers are re-chosen
UP_HOLD_SECONDS = 5.0  # the budget must allow a higher layer this long before it is taken
LOSS_THRESHOLD = 0.10  # reported loss above this lowers the budget (as loss-based GCC does)
LOSS_VALID_SECONDS = 3.0  # a loss report counts this long (receiver reports come every ~1 s)
REMB_VALID_SECONDS = 10.0  # without a fresh REMB the last one still counts this long


def quality_cap(quality: str | None, layers: int) -> int:
    """The highest layer index `quality` allows among `layers` ranked layers (low = 0)."""
    if quality is None or layers <= 0:
        return max(layers - 1, 0)
    if quality == "low":
        return 0
    if quality == "medium":
        return min(1, layers - 1)
    return layers - 1


class StreamDemand:
    """One stream under a subscriber's budget: the bitrate of each of its layers (ranked, lowest
    first; one entry for a stream that cannot switch) and what the allocation decided."""

    __slots__ = ("bitrates", "cap", "switchable", "target", "up_since", "up_level")

    def __init__(self, switchable: bool = True) -> None:
        self.bitrates: list[int] = []
        self.cap: int | None = None  # highest layer index allowed (quality), None: any
        self.switchable = switchable
        self.target: int | None = None  # the layer index chosen, None before the first choice
        self.up_since: float | None = None
        self.up_level = 0


class SubscriberBudget:
    """The estimate of one subscriber's link and the allocation of its streams."""

    __slots__ = ("remb", "remb_at", "loss", "loss_at")

    def __init__(self) -> None:
        self.remb: int | None = None
        self.remb_at = 0.0
        self.loss = 0.0
        self.loss_at = -1e9

    def on_remb(self, bitrate: int, now: float) -> None:
        self.remb = max(0, int(bitrate))
        self.remb_at = now

    def on_loss(self, fraction: float, now: float) -> None:
        """A receiver report's fraction lost (0..1) for one of the subscriber's streams: the
        worst recent one counts."""
        if now - self.loss_at > LOSS_VALID_SECONDS or fraction >= self.loss:
            self.loss = fraction
            self.loss_at = now

    def budget(self, now: float) -> int | None:
        """Bits/s the subscriber can take now, or None while nothing is known."""
        if self.remb is None or now - self.remb_at > REMB_VALID_SECONDS:
            return None
        value = self.remb
        if self.loss > LOSS_THRESHOLD and now - self.loss_at <= LOSS_VALID_SECONDS:
            value = int(value * (1 - 0.5 * self.loss))
        return value

    def allocate(self, streams: list[StreamDemand], now: float) -> tuple[int, int | None]:
        """Choose each switchable stream's target layer (see module docstring). Returns what the
        targets cost (bits/s, fixed streams included) and the smallest step up that the budget
        does not cover (None when every stream is at its top): what a probe has to find."""
        budget = self.budget(now)
        switchable = [s for s in streams if s.switchable and s.bitrates]
        if not switchable:
            return 0, None
        if budget is None:
            # No estimate yet: start at the lowest layer, keep what was chosen before.
            for s in switchable:
                top = _top(s)
                s.target = 0 if s.target is None else min(s.target, top)
                s.up_since = None
            return _missing(streams, None)
        left = budget - sum(s.bitrates[0] for s in streams if not s.switchable and s.bitrates)
        levels = dict.fromkeys(map(id, switchable), 0)
        left -= sum(s.bitrates[0] for s in switchable)
        blocked: set[int] = set()
        level = 1
        while True:
            raised = False
            for s in switchable:
                key = id(s)
                if key in blocked or level > _top(s):
                    continue
                extra = s.bitrates[level] - s.bitrates[level - 1]
                if extra <= left:
                    left -= extra
                    levels[key] = level
                    raised = True
                else:
                    blocked.add(key)  # this stream stops here; the others may still rise
            if not raised:
                break
            level += 1
        for s in switchable:
            self._apply(s, levels[id(s)], now)
        return _missing(streams, budget)

    @staticmethod
    def _apply(s: StreamDemand, desired: int, now: float) -> None:
        if s.target is None or desired < s.target or s.target > _top(s):
            s.target = min(desired, _top(s))
            s.up_since = None
        elif desired == s.target:
            s.up_since = None
        elif s.up_since is None:
            s.up_since = now
            s.up_level = desired
        else:
            s.up_level = min(s.up_level, desired)
            if now - s.up_since >= UP_HOLD_SECONDS:
                s.target = s.up_level
                s.up_since = None


def _missing(streams: list[StreamDemand], budget: int | None) -> tuple[int, int | None]:
    used = sum(s.bitrates[min(s.target or 0, len(s.bitrates) - 1)] for s in streams if s.bitrates)
    steps = [
        s.bitrates[s.target + 1] - s.bitrates[s.target]
        for s in streams
        if s.switchable and s.bitrates and s.target is not None and s.target < _top(s)
    ]
    if not steps:
        return used, None
    step = min(steps)
    if budget is not None and budget - used >= step:
        return used, None  # it fits: the hold is running, nothing to find
    return used, step


class Prober:
    """Padding probes for one subscriber (mediasoup#316, LiveKit's padding probes): a receiver's
    estimate never rises much above what it receives (libwebrtc and aiortc clamp it at 1.5 times
    the incoming rate), so a subscriber held on a low layer would stay there. While the next step
    up does not fit, the server adds padding worth that step; the estimate can then grow into it,
    and the usual 5 s hold applies. A probe that meets congestion (the estimate falls) stops and
    waits, twice as long each time."""

    __slots__ = ("rate", "started", "start_budget", "next_at", "backoff")

    MIN_BACKOFF = 5.0
    MAX_BACKOFF = 60.0
    MAX_PROBE_SECONDS = 30.0
    MAX_RATE = 1_500_000

    def __init__(self) -> None:
        self.rate = 0  # padding bits/s to send now
        self.started = 0.0
        self.start_budget = 0
        self.next_at = 0.0
        self.backoff = self.MIN_BACKOFF

    def update(self, budget: int | None, used: int, step: int | None, now: float) -> int:
        if budget is None or step is None:
            if step is None and budget is not None:
                self.backoff = self.MIN_BACKOFF  # nothing to find: a fresh start next time
            self.rate = 0
            return 0
        if self.rate:
            if budget < self.start_budget * 0.85 or now - self.started > self.MAX_PROBE_SECONDS:
                self.rate = 0
                self.next_at = now + self.backoff
                self.backoff = min(self.backoff * 2, self.MAX_BACKOFF)
                return 0
        elif now < self.next_at or budget < used:
            return 0  # backing off, or a real shortage: padding would only add to it
        else:
            self.started = now
            self.start_budget = budget
        self.rate = min(step, self.MAX_RATE)
        return self.rate


def _top(s: StreamDemand) -> int:
    top = len(s.bitrates) - 1
    return top if s.cap is None else max(0, min(top, s.cap))


__all__ = [
    "ALLOCATE_SECONDS",
    "Prober",
    "QUALITIES",
    "UP_HOLD_SECONDS",
    "StreamDemand",
    "SubscriberBudget",
    "quality_cap",
]
