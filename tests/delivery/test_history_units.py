"""Topic options, the memory engine and the recovery rule, without sockets."""

from __future__ import annotations

import pytest

from melody.delivery.history import (
    HistoryPage,
    MemoryHistory,
    StoredPublication,
    StreamPosition,
    recovery,
)
from melody.delivery.options import TopicOptions, TopicTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- options -------------------------------------------------------------------------------------

def test_the_most_specific_pattern_wins() -> None:
    table = TopicTable()
    wide, narrow, exact, later = (TopicOptions(history_size=n) for n in (1, 2, 3, 4))
    table.configure("*", wide)
    table.configure("chat:*", narrow)
    table.configure("chat:lobby", exact)
    assert table.lookup("chat:lobby") is exact
    assert table.lookup("chat:other") is narrow
    assert table.lookup("news") is wide
    # Same specificity: the one configured last.
    table.configure("chat:?????", later)
    assert table.lookup("chat:other") is later
    assert table.lookup("chat:x") is narrow


def test_reconfiguring_a_pattern_replaces_it_and_clears_the_cache() -> None:
    table = TopicTable()
    table.configure("a:*", TopicOptions(history_size=1))
    assert table.lookup("a:1") == TopicOptions(history_size=1)
    table.configure("a:*", TopicOptions(history_size=5))
    assert table.lookup("a:1") == TopicOptions(history_size=5)
    assert list(table.patterns()) == ["a:*"]
    assert not TopicTable()
    assert TopicTable().lookup("anything") is None


@pytest.mark.parametrize("kwargs", [
    {"history_size": -1}, {"history_size": 1.5}, {"history_size": 2_000_000},
    {"history_size": 1, "history_ttl": 0}, {"history_size": 1, "history_ttl": float("nan")},
    {"history_size": 1, "history_ttl": True}, {"history_ttl": 5.0},
])
def test_bad_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TopicOptions(**kwargs)  # type: ignore[arg-type]


# -- memory engine ---------------------------------------------------------------------------------

def test_offsets_increase_and_history_is_bounded_by_size() -> None:
    history = MemoryHistory()
    positions = [history.append("t", f'"{i}"', 3, None) for i in range(1, 6)]
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions}) == 1
    page = history.read("t", 0)
    assert page.publications == [StoredPublication(3, '"3"'), StoredPublication(4, '"4"'),
                                 StoredPublication(5, '"5"')]
    assert page.position == positions[-1]
    assert history.read("t", 3).publications == [StoredPublication(4, '"4"'),
                                                  StoredPublication(5, '"5"')]
    assert history.read("t", 3, limit=1).publications == [StoredPublication(4, '"4"')]
    assert history.read("t", 5).publications == []


def test_entries_expire_after_the_ttl_and_idle_streams_are_forgotten() -> None:
    clock = Clock()
    history = MemoryHistory(idle_ttl=60, clock=clock)
    history.append("t", "1", 10, 5.0)
    clock.now += 3
    history.append("t", "2", 10, 5.0)
    clock.now += 3  # the first is 6 s old, the second 3 s
    assert [p.offset for p in history.read("t", 0).publications] == [2]
    epoch = history.position("t").epoch
    clock.now += 100
    assert history.read("t", 0).publications == []
    assert history.position("t").epoch == epoch  # kept: touched just now
    clock.now += 100
    history._sweep(clock.now)
    assert len(history) == 0
    # A stream that starts again has another epoch: its old offsets mean nothing now.
    assert history.position("t").epoch != epoch


def test_epochs_differ_between_engines_and_topics() -> None:
    a, b = MemoryHistory(), MemoryHistory()
    assert a.position("t").epoch != b.position("t").epoch
    assert a.position("t").epoch != a.position("u").epoch


# -- the recovery rule -----------------------------------------------------------------------------

def page(first: int, top: int, epoch: str = "e") -> HistoryPage:
    return HistoryPage([StoredPublication(o, str(o)) for o in range(first, top + 1)],
                       StreamPosition(top, epoch))


@pytest.mark.parametrize(("history", "since", "recovered", "offsets"), [
    (page(1, 10), StreamPosition(7, "e"), True, [8, 9, 10]),
    (page(1, 10), StreamPosition(10, "e"), True, []),            # up to date
    (page(1, 10), StreamPosition(7, "other"), False, []),        # another epoch
    (page(5, 10), StreamPosition(2, "e"), False, []),            # 3 and 4 pushed out
    (page(1, 10), StreamPosition(12, "e"), False, []),           # ahead of the stream
    (page(8, 9)._replace(position=StreamPosition(10, "e")),     # the page stops short of top
     StreamPosition(7, "e"), False, []),
    (HistoryPage([], StreamPosition(0, "e")), StreamPosition(0, "e"), True, []),
])
def test_recovery(history: HistoryPage, since: StreamPosition, recovered: bool,
                  offsets: list[int]) -> None:
    ok, missed = recovery(history, since)
    assert ok is recovered
    assert [p.offset for p in missed] == offsets
