"""The reader threads of sockpool.Pool's map_async and imap: reused, never leaked."""

from __future__ import annotations

import os
import threading

import pytest

from sockpool.api.readers import ReaderThreads

pytestmark = pytest.mark.timeout(30)


def _ran_on(done: threading.Event, where: list[int]) -> None:
    where.append(threading.get_ident())
    done.set()


def test_a_reader_idle_again_takes_the_next_call_and_a_busy_one_does_not() -> None:
    # A thread started for each call cost about 0.2 ms, as much as a small map.
    readers = ReaderThreads()
    where: list[int] = []
    for _ in range(3):
        done = threading.Event()
        readers.run(_ran_on, done, where)
        assert done.wait(5)
        while not readers._idle:  # it is idle once it put itself back
            threading.Event().wait(0.001)
    assert len(set(where)) == 1
    release = threading.Event()
    readers.run(release.wait)  # busy until released
    done = threading.Event()
    readers.run(_ran_on, done, where)
    assert done.wait(5)  # not queued behind the busy one
    assert where[-1] != where[0]
    release.set()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_readers_of_its_own() -> None:
    # The parent's idle readers do not exist in the child: a call handed to one
    # would never run (the module's instance forgets them at fork).
    from sockpool.api.readers import readers

    done = threading.Event()
    readers.run(_ran_on, done, [])
    assert done.wait(5)
    while not readers._idle:
        threading.Event().wait(0.001)
    pid = os.fork()
    if pid == 0:
        child_done = threading.Event()
        readers.run(_ran_on, child_done, [])
        os._exit(0 if child_done.wait(5) else 1)
    assert os.waitpid(pid, 0)[1] == 0
