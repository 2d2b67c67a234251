"""Issue 19: ``Pool(...).apply_async(f, args).get()`` that seemed to hang under load.

What looked like a hang was a slowdown that never ended: a post that came while
the I/O thread emptied its wake-up pipe (after it cleared the flag, before its
read) had its byte read with the flag left set, so no later post wrote one, and
from then on every submit waited for the I/O thread's next timer, up to 250 ms a
round trip: a benchmark's 2000 ``apply_async(...).get()`` calls took minutes
(fixed in ``Mailbox.clear_wake``; ``test_mailbox.py`` checks the mailbox alone).
Here the same interleaving is forced once in a real cluster's I/O thread; its
wake-up must still work afterwards.

The lock that fix takes on the I/O thread showed a second way to hang: the garbage
collector may run a finalizer that posts (an abandoned imap cancelling its job)
while the thread holds the mailbox's lock, and a plain lock deadlocked there.
"""

from __future__ import annotations

import gc
import os
import select
import sys
import threading
import weakref
from types import FrameType
from typing import Any

import pytest

import sockpool
from sockpool.dispatch import mailbox as mailbox_module
from sockpool.dispatch.mailbox import Mailbox


class _PostDuringTheRead:
    """``os`` for the mailbox module: the I/O thread's first read of the wake-up pipe
    lets another thread post first (what a loaded machine does now and then)."""

    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox
        self.raced = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def read(self, fd: int, size: int) -> bytes:
        if (fd == self._mailbox.fileno() and not self.raced.is_set()
                and threading.current_thread().name == "sockpool-io"):
            self.raced.set()
            poster = threading.Thread(target=self._mailbox.post, args=(lambda: None,))
            poster.start()
            poster.join(0.2)  # it may have to wait for the read to finish
        return os.read(fd, size)


@pytest.mark.timeout(60)
def test_a_submit_that_races_the_io_threads_wake_up_read_leaves_later_submits_waking_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with sockpool.Pool(1) as pool:
        mailbox = pool.cluster._dispatcher.mailbox
        racing = _PostDuringTheRead(mailbox)
        monkeypatch.setattr(mailbox_module, "os", racing)
        assert pool.apply_async(abs, (-1,)).get() == 1  # its submit wakes the I/O thread
        assert racing.raced.wait(30)
        monkeypatch.undo()

        # Hold the I/O thread in a command, so that it cannot empty the pipe, then post
        # as a submit does: the pipe must be readable, or the I/O thread would see the
        # post only at its next timer.
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(30)

        mailbox.post(hold)
        assert held.wait(30)
        try:
            mailbox.post(lambda: None)
            readable, _, _ = select.select([mailbox.fileno()], [], [], 0)
        finally:
            release.set()
        assert readable, "the I/O thread would not wake for a submit posted now"
        assert [pool.apply_async(abs, (-i,)).get() for i in range(20)] == list(range(20))


class _Garbage:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.timeout(60)
@pytest.mark.parametrize("locked_call", ["read", "write"])  # clear_wake's read, post's write
def test_a_finalizer_that_posts_while_the_mailboxs_lock_is_held_does_not_deadlock(
        locked_call: str) -> None:
    mailbox = Mailbox()
    ran: list[str] = []
    if locked_call == "read":
        mailbox.post(ran.append, "posted")  # clear_wake has a byte to read
    target = getattr(os, locked_call)

    def collect_there(frame: FrameType, event: str, arg: Any) -> None:
        # A collection starts inside the locked region (as an allocation there may
        # start one) and frees a cycle whose finalizer posts, on this same thread.
        if event == "c_call" and arg is target:
            sys.setprofile(None)
            garbage = _Garbage()
            weakref.finalize(garbage, mailbox.post, ran.append, "finalizer")
            del garbage
            gc.collect()

    def locked_region() -> None:
        sys.setprofile(collect_there)
        try:
            if locked_call == "read":
                mailbox.clear_wake()
            else:
                mailbox.post(ran.append, "posted")
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=locked_region, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the thread deadlocked on the mailbox's own lock"
    mailbox.clear_wake()
    mailbox.run_all()
    assert ran == ["posted", "finalizer"]
    mailbox.post(ran.append, "later")  # the wake-up still works
    assert select.select([mailbox.fileno()], [], [], 5.0)[0]
    mailbox.close()
    assert ran == ["posted", "finalizer", "later"]
