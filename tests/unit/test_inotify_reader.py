"""The inotify reader (watchdog's lower layer, read in batches): real folders, real kernel events."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.support.wait import wait_until
from watcher.pipeline.inotify_reader import InotifyReader
from watcher.pipeline.observer import RawEvent


class Sink:
    """Collects what the reader hands over (from its thread)."""

    def __init__(self) -> None:
        self.events: list[RawEvent] = []
        self.batches: list[list[RawEvent]] = []  # each hand-off apart
        self.reads = 0
        self.lost = 0
        self._lock = threading.Lock()

    def __call__(self, events: list[RawEvent]) -> None:
        with self._lock:
            self.events.extend(events)
            self.batches.append(list(events))
            self.reads += 1

    def on_lost(self) -> None:
        self.lost += 1

    def seen(self, kind: str, path: Path, *, dest: bool = False) -> bool:
        with self._lock:
            return any(e.kind == kind and (e.dest if dest else e.src) == str(path) for e in self.events)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Sink, InotifyReader]]:
    inbox = tmp_path / "inbox"
    (inbox / "old" / "deep").mkdir(parents=True)
    sink = Sink()
    reader = InotifyReader(inbox, True, sink, sink.on_lost)
    reader.start()
    yield inbox, sink, reader
    reader.stop()
    reader.join(5)
    assert not reader.is_alive()


def test_a_write_a_rename_in_and_a_delete_are_reported_and_a_link_is_not(
    watched: tuple[Path, Sink, InotifyReader], tmp_path: Path
) -> None:
    inbox, sink, _ = watched
    (inbox / "a.csv").write_bytes(b"a")
    staged = tmp_path / "staged.csv"
    staged.write_bytes(b"b")
    os.rename(staged, inbox / "b.csv")
    wait_until(
        lambda: sink.seen("closed", inbox / "a.csv") and sink.seen("moved", inbox / "b.csv", dest=True), 5, "events"
    )
    # What a delivery does to its source: a link elsewhere (IN_ATTRIB), then the unlink.
    before = len(sink.events)
    os.link(inbox / "a.csv", tmp_path / "linked")
    (inbox / "a.csv").unlink()
    wait_until(lambda: sink.seen("deleted", inbox / "a.csv"), 5, "the delete")
    assert [e.kind for e in sink.events[before:]] == ["deleted"], "the link raised no event"


def test_a_new_folder_is_watched_before_its_event_is_handed_on(watched: tuple[Path, Sink, InotifyReader]) -> None:
    inbox, sink, reader = watched
    start = reader.watches()
    (inbox / "new" / "sub").mkdir(parents=True)
    wait_until(lambda: sink.seen("created", inbox / "new"), 5, "the folder's event")
    wait_until(lambda: reader.watches() == start + 2, 5, "watches for the folder and the one below it")
    (inbox / "new" / "sub" / "f.txt").write_bytes(b"x")
    wait_until(lambda: sink.seen("closed", inbox / "new" / "sub" / "f.txt"), 5, "a write in the new folder")


def test_a_folder_renamed_inside_the_tree_keeps_its_watches_under_the_new_name(
    watched: tuple[Path, Sink, InotifyReader],
) -> None:
    inbox, sink, reader = watched
    start = reader.watches()
    os.rename(inbox / "old", inbox / "renamed")
    wait_until(lambda: sink.seen("moved", inbox / "renamed", dest=True), 5, "the folder's move")
    (inbox / "renamed" / "deep" / "f.txt").write_bytes(b"x")
    wait_until(lambda: sink.seen("closed", inbox / "renamed" / "deep" / "f.txt"), 5, "the new path")
    assert not sink.seen("closed", inbox / "old" / "deep" / "f.txt"), "never the old path"
    assert reader.watches() == start


def test_a_folder_moved_out_of_the_tree_is_no_longer_watched(
    watched: tuple[Path, Sink, InotifyReader], tmp_path: Path
) -> None:
    inbox, sink, reader = watched
    start = reader.watches()
    os.rename(inbox / "old", tmp_path / "outside")
    wait_until(lambda: reader.watches() == start - 2, 5, "the moved-out folders' watches dropped")
    (tmp_path / "outside" / "deep" / "f.txt").write_bytes(b"x")
    (inbox / "marker").write_bytes(b"m")  # once this is seen, an event from outside would be too
    wait_until(lambda: sink.seen("closed", inbox / "marker"), 5, "the marker")
    assert not any("f.txt" in e.src for e in sink.events), "nothing from outside the inbox"


def test_the_reader_ends_when_the_inbox_itself_goes(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sink = Sink()
    reader = InotifyReader(inbox, True, sink, sink.on_lost)
    reader.start()
    inbox.rmdir()
    wait_until(lambda: not reader.is_alive(), 5, "the reader thread to end (the supervisor restarts it)")


def test_a_create_waits_for_its_close_and_goes_on_alone_when_none_comes(
    watched: tuple[Path, Sink, InotifyReader],
) -> None:
    inbox, sink, _ = watched
    # A writer that takes 2 ms between create and close (less than HOLD_S): one hand-off with both,
    # where handing each read on at once would give the create a wake-up of the loop of its own.
    for i in range(5):
        path = inbox / f"f{i}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        time.sleep(0.002)  # the writer's pace in this scenario, not a synchronisation
        os.close(fd)
        wait_until(partial(sink.seen, "closed", path), 5, f"the close of {path.name}")
        with_close = [b for b in sink.batches if any(e.kind == "closed" and e.src == str(path) for e in b)]
        assert len(with_close) == 1 and any(e.kind == "created" for e in with_close[0]), sink.batches
    # A file created and left open: its create is handed on after the hold, not kept.
    held = os.open(inbox / "open", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        wait_until(partial(sink.seen, "created", inbox / "open"), 5, "the lone create handed on")
    finally:
        os.close(held)
