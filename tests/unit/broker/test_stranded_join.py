"""StrandedJoinRepair: a consumer left REBALANCING with no rejoin pending is asked to rejoin,
but only once the state has been seen twice in a row (a join being collected looks the same
for a moment), and a client without the private coordinator is left alone."""

from __future__ import annotations

from types import SimpleNamespace

from memkd_stream.broker.stranded_join import StrandedJoinRepair


class FakeCoordinator:
    def __init__(self, rebalancing: bool, rejoin_pending: bool) -> None:
        self.rebalancing = rebalancing
        self.rejoin_pending = rejoin_pending
        self.requested = 0

    def rebalance_in_progress(self) -> bool:
        return self.rebalancing

    def need_rejoin(self) -> bool:
        return self.rejoin_pending

    def request_rejoin(self) -> None:
        self.requested += 1
        self.rejoin_pending = True


def test_a_stranded_join_seen_twice_requests_one_rejoin() -> None:
    coordinator = FakeCoordinator(rebalancing=True, rejoin_pending=False)
    consumer = SimpleNamespace(_coordinator=coordinator)
    repair = StrandedJoinRepair()
    assert repair.check(consumer) is False  # first sight: may be a join about to be collected
    assert repair.check(consumer) is True
    assert coordinator.requested == 1
    assert repair.check(consumer) is False  # the rejoin is pending now: a join in progress
    assert coordinator.requested == 1


def test_a_join_in_progress_or_a_stable_member_is_left_alone() -> None:
    repair = StrandedJoinRepair()
    joining = SimpleNamespace(_coordinator=FakeCoordinator(rebalancing=True, rejoin_pending=True))
    stable = SimpleNamespace(_coordinator=FakeCoordinator(rebalancing=False, rejoin_pending=False))
    for consumer in (joining, stable, joining, stable):
        assert repair.check(consumer) is False
    assert joining._coordinator.requested == stable._coordinator.requested == 0


def test_a_state_that_heals_between_checks_resets_the_count() -> None:
    coordinator = FakeCoordinator(rebalancing=True, rejoin_pending=False)
    consumer = SimpleNamespace(_coordinator=coordinator)
    repair = StrandedJoinRepair()
    assert repair.check(consumer) is False
    coordinator.rebalancing = False  # the current poll collected the join
    assert repair.check(consumer) is False
    coordinator.rebalancing = True
    assert repair.check(consumer) is False
    assert coordinator.requested == 0


def test_a_client_without_a_coordinator_is_left_alone() -> None:
    repair = StrandedJoinRepair()
    for consumer in (object(), SimpleNamespace(_coordinator=None), object()):
        assert repair.check(consumer) is False
