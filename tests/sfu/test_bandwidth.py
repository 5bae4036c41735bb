"""Layer selection per subscriber (DESIGN §6.1), with a fake clock: one budget for everything it
receives, down at the first allocation after a shortage, up only after the estimate held 5 s,
`quality` caps a stream, and the lowest layer is kept when nothing fits."""

from sfu.bandwidth import ALLOCATE_SECONDS, UP_HOLD_SECONDS, StreamDemand, SubscriberBudget, quality_cap

LAYERS = [150_000, 500_000, 1_500_000]


def stream(cap=None, bitrates=LAYERS):
    s = StreamDemand()
    s.bitrates = list(bitrates)
    s.cap = cap
    return s


def run(budget, streams, start, seconds, remb=None):
    """Allocate every ALLOCATE_SECONDS from `start` for `seconds`, sending `remb` each time;
    returns the time and the targets at each allocation."""
    out = []
    t = start
    while t < start + seconds - 1e-9:
        if remb is not None:
            budget.on_remb(remb, t)
        budget.allocate(streams, t)
        out.append((round(t - start, 3), [s.target for s in streams]))
        t += ALLOCATE_SECONDS
    return out


def test_no_estimate_starts_at_the_lowest_layer():
    s = stream()
    SubscriberBudget().allocate([s], 0.0)
    assert s.target == 0


def test_first_estimate_picks_the_highest_layers_that_fit():
    b = SubscriberBudget()
    b.on_remb(2_000_000, 0.0)
    s = stream()
    b.allocate([s], 0.0)
    assert s.target == 2


def test_down_at_once_up_only_after_five_seconds_held():
    b = SubscriberBudget()
    s = stream()
    run(b, [s], 0.0, 2.0, remb=3_000_000)
    assert s.target == 2
    # shortage: the very next allocation goes down (well within the 2 s the contract allows)
    steps = run(b, [s], 2.0, 1.0, remb=300_000)
    assert steps[0][1] == [0]
    # the estimate comes back: nothing moves for 5 s, then the layer is taken
    steps = run(b, [s], 3.0, 8.0, remb=3_000_000)
    ups = [t for t, targets in steps if targets == [2]]
    assert ups and UP_HOLD_SECONDS - 1e-6 <= ups[0] <= UP_HOLD_SECONDS + ALLOCATE_SECONDS
    assert all(targets == [0] for t, targets in steps if t < UP_HOLD_SECONDS)


def test_an_estimate_that_dips_restarts_the_hold():
    b = SubscriberBudget()
    s = stream()
    run(b, [s], 0.0, 1.0, remb=200_000)
    assert s.target == 0
    run(b, [s], 1.0, 4.0, remb=3_000_000)
    run(b, [s], 5.0, 0.5, remb=200_000)  # a dip before 5 s: the hold starts over
    steps = run(b, [s], 5.5, 6.0, remb=3_000_000)
    ups = [t for t, targets in steps if targets == [2]]
    assert ups[0] >= UP_HOLD_SECONDS - 1e-6


def test_up_takes_the_lowest_level_that_held():
    b = SubscriberBudget()
    s = stream()
    run(b, [s], 0.0, 1.0, remb=100_000)
    run(b, [s], 1.0, 2.0, remb=3_000_000)
    run(b, [s], 3.0, 4.0, remb=700_000)  # held long enough for layer 1 only
    assert s.target == 1


def test_one_budget_shared_fairly_between_streams():
    b = SubscriberBudget()
    b.on_remb(1_200_000, 0.0)
    a, c = stream(), stream()
    b.allocate([a, c], 0.0)
    # each gets 500 kbit/s rather than one 1.5 Mbit/s and the other nothing
    assert (a.target, c.target) == (1, 1)


def test_streams_that_cannot_switch_take_their_bitrate_first():
    b = SubscriberBudget()
    b.on_remb(1_000_000, 0.0)
    fixed = StreamDemand(switchable=False)
    fixed.bitrates = [600_000]
    s = stream()
    b.allocate([fixed, s], 0.0)
    assert s.target == 0  # 400 kbit/s left: not enough for the 500 kbit/s layer
    assert fixed.target is None


def test_quality_caps_a_stream():
    b = SubscriberBudget()
    b.on_remb(5_000_000, 0.0)
    low, medium, high = stream(cap=quality_cap("low", 3)), stream(cap=quality_cap("medium", 3)), stream()
    b.allocate([low, medium, high], 0.0)
    assert (low.target, medium.target, high.target) == (0, 1, 2)
    assert quality_cap("medium", 2) == 1
    assert quality_cap(None, 3) == 2


def test_nothing_fits_still_gets_the_lowest_layer():
    b = SubscriberBudget()
    b.on_remb(10_000, 0.0)
    a, c = stream(), stream()
    b.allocate([a, c], 0.0)
    assert (a.target, c.target) == (0, 0)


def test_heavy_loss_lowers_the_budget():
    b = SubscriberBudget()
    s = stream()
    b.on_remb(1_600_000, 0.0)
    b.allocate([s], 0.0)
    assert s.target == 2
    b.on_loss(0.3, 0.5)
    b.on_remb(1_600_000, 0.5)
    b.allocate([s], 0.5)
    assert b.budget(0.5) == 1_360_000
    assert s.target == 1
    # the loss report expires
    assert b.budget(10.0) is None or b.budget(4.0) == 1_600_000


def test_a_layer_that_stops_lowers_the_top():
    b = SubscriberBudget()
    s = stream()
    run(b, [s], 0.0, 1.0, remb=5_000_000)
    assert s.target == 2
    s.bitrates = LAYERS[:2]  # the top layer is no longer received
    b.allocate([s], 1.0)
    assert s.target == 1


def test_allocation_reports_the_step_a_probe_must_find():
    b = SubscriberBudget()
    b.on_remb(300_000, 0.0)
    s = stream()
    used, step = b.allocate([s], 0.0)
    assert (s.target, used, step) == (0, 150_000, 350_000)
    b.on_remb(3_000_000, 0.1)
    used, step = b.allocate([s], 0.1)
    assert step is None  # it fits: only the hold stands in the way


def test_prober_pads_for_the_next_step_backs_off_on_congestion():
    from sfu.bandwidth import Prober

    p = Prober()
    assert p.update(None, 150_000, 350_000, 0.0) == 0  # no estimate: nothing
    assert p.update(100_000, 150_000, 350_000, 0.0) == 0  # a real shortage: no padding on top
    assert p.update(300_000, 150_000, 350_000, 0.0) == 350_000
    assert p.update(400_000, 150_000, 350_000, 1.0) == 350_000  # the estimate grows: go on
    assert p.update(200_000, 150_000, 350_000, 2.0) == 0  # it falls (congestion): stop
    assert p.update(300_000, 150_000, 350_000, 2.0 + Prober.MIN_BACKOFF - 0.1) == 0  # backing off
    assert p.update(300_000, 150_000, 350_000, 2.0 + Prober.MIN_BACKOFF) == 350_000
    assert p.update(100_000, 150_000, 350_000, 8.0) == 0
    assert p.next_at == 8.0 + 2 * Prober.MIN_BACKOFF  # twice as long
    assert p.update(3_000_000, 150_000, None, 9.0) == 0  # nothing to find: fresh start
    assert p.backoff == Prober.MIN_BACKOFF


def test_a_probe_is_bounded_in_time():
    from sfu.bandwidth import Prober

    p = Prober()
    assert p.update(300_000, 150_000, 350_000, 0.0)
    assert p.update(300_000, 150_000, 350_000, Prober.MAX_PROBE_SECONDS + 0.1) == 0
