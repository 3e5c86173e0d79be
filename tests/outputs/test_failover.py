"""forwarder.outputs._failover: round-robin over a cluster's nodes, and the growing cooldown of a
node that keeps failing, on an injected clock."""

from __future__ import annotations

import pytest

from forwarder.outputs._failover import Endpoints


class FakeClock:
    """A monotonic clock that only moves when the test sets `now`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def picks(endpoints: Endpoints[str], count: int) -> list[str]:
    return [endpoints.pick() for _ in range(count)]


def benched(endpoints: Endpoints[str], node: str) -> bool:
    """True when a whole round of picks passes `node` by."""
    return node not in picks(endpoints, len(endpoints))


def test_at_least_one_endpoint_is_needed() -> None:
    with pytest.raises(ValueError, match="at least one endpoint"):
        Endpoints([])


def test_healthy_nodes_take_turns_in_the_configured_order() -> None:
    endpoints = Endpoints(["a", "b", "c"], clock=FakeClock())
    assert picks(endpoints, 7) == ["a", "b", "c", "a", "b", "c", "a"]
    endpoints.succeeded("b")  # a success changes nobody's turn
    assert picks(endpoints, 3) == ["b", "c", "a"]


def test_a_failed_node_is_skipped_until_its_cooldown_is_over() -> None:
    clock = FakeClock()
    endpoints = Endpoints(["a", "b", "c"], clock=clock)
    failed_at = clock.now
    endpoints.failed("b")
    assert picks(endpoints, 4) == ["a", "c", "a", "c"]
    clock.now = failed_at + 0.999
    assert benched(endpoints, "b")
    clock.now = failed_at + 1.0  # the first cooldown: 1 s
    assert not benched(endpoints, "b")


@pytest.mark.parametrize(
    ("options", "cooldowns"),
    [
        # The documented defaults: from 1 s, doubling, at most 60 s.
        ({}, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]),
        ({"base_cooldown_secs": 0.5, "max_cooldown_secs": 3.0}, [0.5, 1.0, 2.0, 3.0, 3.0]),
    ],
)
def test_a_node_that_keeps_failing_cools_down_twice_as_long_each_time_up_to_the_cap(
    options: dict[str, float], cooldowns: list[float]
) -> None:
    clock = FakeClock()
    endpoints = Endpoints(["a", "b"], clock=clock, **options)
    for cooldown in cooldowns:
        # Tried again as soon as it is back, and failing again.
        failed_at = clock.now
        endpoints.failed("a")
        clock.now = failed_at + cooldown - 0.001
        assert benched(endpoints, "a"), cooldown
        clock.now = failed_at + cooldown
        assert not benched(endpoints, "a"), cooldown


def test_a_success_starts_the_next_cooldown_from_the_beginning() -> None:
    clock = FakeClock()
    endpoints = Endpoints(["a", "b"], clock=clock)
    for _ in range(3):
        endpoints.failed("a")  # cooling down for 4 s now
    endpoints.succeeded("a")
    assert not benched(endpoints, "a")
    failed_at = clock.now
    endpoints.failed("a")
    clock.now = failed_at + 0.999
    assert benched(endpoints, "a")
    clock.now = failed_at + 1.0  # not the 8 s a fourth failure in a row would earn
    assert not benched(endpoints, "a")


def test_when_every_node_cools_down_the_one_back_soonest_is_used() -> None:
    clock = FakeClock()
    endpoints = Endpoints(["a", "b", "c"], clock=clock)
    failed_at = clock.now
    endpoints.failed("a")
    endpoints.failed("a")  # back at +2 s
    endpoints.failed("b")  # back at +1 s
    for _ in range(3):
        endpoints.failed("c")  # back at +4 s
    # A send is still attempted, on the node expected back first, every time.
    assert picks(endpoints, 3) == ["b", "b", "b"]
    endpoints.failed("b")  # it failed again: back at +2 s, after "a" (ties go in list order)
    assert picks(endpoints, 2) == ["a", "a"]
    clock.now = failed_at + 2.0
    assert picks(endpoints, 4) == ["a", "b", "a", "b"]
    clock.now = failed_at + 4.0
    assert picks(endpoints, 3) == ["c", "a", "b"]


def test_a_held_node_sits_out_its_retry_after_even_when_it_answers_meanwhile() -> None:
    clock = FakeClock()
    endpoints = Endpoints(["a", "b"], clock=clock)
    held_at = clock.now
    assert endpoints.hold("a", 30) == 0.0  # "b" may take a request now
    endpoints.succeeded("a")  # an ack poll or a health check to "a" does not end the hold
    clock.now = held_at + 29.999
    assert benched(endpoints, "a")
    clock.now = held_at + 30
    assert not benched(endpoints, "a")


def test_when_every_node_is_held_the_one_free_soonest_is_picked() -> None:
    clock = FakeClock()
    endpoints = Endpoints(["a", "b"], clock=clock)
    assert endpoints.hold("a", 20) == 0.0
    assert endpoints.hold("b", 5) == 5.0
    assert endpoints.hold("b", 2) == 5.0  # a shorter hold never shortens a longer one
    assert picks(endpoints, 2) == ["b", "b"]


def test_a_retry_after_is_kept_when_the_other_nodes_are_benched() -> None:
    """ "b" is down, benched for a minute; "a" asks for 30 s. The retry waited for nothing, and
    went to "a" (free sooner than "b") at once."""
    clock = FakeClock()
    endpoints = Endpoints(["a", "b"], clock=clock)
    for _ in range(7):
        endpoints.failed("b")  # down for a while: benched for the 60 s cap
    assert endpoints.hold("a", 30) == 30.0
    assert picks(endpoints, 1) == ["a"]  # only once the wait is over, which the caller keeps
    endpoints.succeeded("b")  # a health check finds it back
    assert endpoints.hold("a", 30) == 0.0
    assert picks(endpoints, 1) == ["b"]
