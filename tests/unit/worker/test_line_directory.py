"""The line directory: invented keys cost no Redis read each, new lines are never refused long."""

from __future__ import annotations

from memkd_stream.lines.errors import StoreUnavailable
from memkd_stream.worker.line_directory import LineDirectory


class Store:
    def __init__(self, lines: set[str]) -> None:
        self.lines_in_redis = set(lines)
        self.reads = 0
        self.down = False

    def lines(self) -> list[str]:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("Redis at test is unreachable")
        return sorted(self.lines_in_redis)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_many_unknown_keys_cost_one_read_per_ttl() -> None:
    store, clock = Store({"A"}), Clock()
    directory = LineDirectory(store, ttl_s=10, clock=clock)  # type: ignore[arg-type]
    assert directory.may_exist("A")
    assert not any(directory.may_exist(f"junk-{i}") for i in range(3000))
    assert store.reads == 1
    clock.now = 11
    assert not directory.may_exist("junk-0") and store.reads == 2


def test_a_line_published_meanwhile_is_found_after_the_ttl_or_at_once_by_its_event() -> None:
    store, clock = Store({"A"}), Clock()
    directory = LineDirectory(store, ttl_s=10, clock=clock)  # type: ignore[arg-type]
    assert not directory.may_exist("B")
    store.lines_in_redis.add("B")
    assert not directory.may_exist("B")  # still within the TTL
    directory.add("B")  # the activation event
    assert directory.may_exist("B") and directory.knows("B")
    store.lines_in_redis.add("C")
    clock.now = 10
    assert directory.may_exist("C")


def test_during_a_redis_outage_the_last_known_set_decides() -> None:
    store, clock = Store({"A"}), Clock()
    directory = LineDirectory(store, ttl_s=10, clock=clock)  # type: ignore[arg-type]
    directory.refresh()
    store.down = True
    clock.now = 20
    assert directory.may_exist("A") and not directory.may_exist("junk")


def test_before_any_successful_read_every_line_may_exist() -> None:
    store = Store({"A"})
    store.down = True
    directory = LineDirectory(store, ttl_s=10)  # type: ignore[arg-type]
    assert directory.may_exist("anything") and not directory.knows("anything")
