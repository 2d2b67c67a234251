"""The I/O thread's mailbox: a command posted from any thread wakes the I/O thread.

A submit, a cancel and every other call on a cluster reach the I/O thread as a
command in its mailbox; if a post failed to wake it, the command would wait
for the next worker message or timer (a heartbeat: up to a second).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from types import FrameType
from typing import Any

import pytest

from sockpool import ClusterClosedError
from sockpool.dispatch import mailbox as mailbox_module
from sockpool.dispatch.mailbox import Mailbox


@pytest.mark.timeout(30)
def test_a_command_posted_while_the_io_thread_empties_the_pipe_leaves_later_posts_waking_it(
) -> None:
    mailbox = Mailbox()
    ran: list[int] = []
    mailbox.post(ran.append, 1)
    posters: list[threading.Thread] = []

    def post_during_the_read(frame: FrameType, event: str, arg: Any) -> None:
        # Another thread posts just as the I/O thread reads the pipe: the race.
        if event == "c_call" and arg is os.read and not posters:
            posters.append(threading.Thread(target=mailbox.post, args=(ran.append, 2)))
            posters[0].start()
            posters[0].join(0.2)  # it may have to wait for the I/O thread

    sys.setprofile(post_during_the_read)
    try:
        mailbox.clear_wake()
    finally:
        sys.setprofile(None)
    posters[0].join()
    try:
        mailbox.run_all()
        assert ran == [1, 2]
        mailbox.post(ran.append, 3)
        woken, _, _ = select.select([mailbox.fileno()], [], [], 5.0)
        assert woken, "a command was posted but the I/O thread's pipe stayed silent"
        mailbox.clear_wake()
        mailbox.run_all()
        assert ran == [1, 2, 3]
    finally:
        mailbox.close()


@pytest.mark.timeout(60)
def test_commands_posted_by_many_threads_all_run_in_each_posters_order() -> None:
    mailbox = Mailbox()
    stop = threading.Event()
    ran: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def io_thread() -> None:
        while not stop.is_set():
            if select.select([mailbox.fileno()], [], [], 5.0)[0]:
                mailbox.clear_wake()
            mailbox.run_all()

    def poster(which: int) -> None:
        for i in range(5_000):
            mailbox.post(ran[which].append, i)

    io = threading.Thread(target=io_thread)
    io.start()
    posters = [threading.Thread(target=poster, args=(which,)) for which in ran]
    try:
        for thread in posters:
            thread.start()
        for thread in posters:
            thread.join()
        # The last posts run once the I/O thread wakes for them, long before its
        # 5-second poll timeout: ask() waits for a command posted after them all.
        assert mailbox.ask(lambda: "done", timeout=4.0) == "done"
        assert all(got == list(range(5_000)) for got in ran.values())
    finally:
        stop.set()
        mailbox.post(lambda: None)
        io.join()
        mailbox.close()


@pytest.mark.timeout(30)
def test_post_and_wait_returns_once_the_command_ran_and_never_waits_long_for_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mailbox = Mailbox()
    ran: list[int] = []

    def io_thread() -> None:
        select.select([mailbox.fileno()], [], [], 10.0)
        mailbox.clear_wake()
        with contextlib.suppress(ZeroDivisionError):
            mailbox.run_all()

    runner = threading.Thread(target=io_thread)
    runner.start()
    try:
        # However late the I/O thread runs (a loaded machine), the caller waits for it.
        monkeypatch.setattr(mailbox_module, "HANDOVER_SECONDS", 10.0)
        mailbox.post_and_wait(ran.append, 1)
        assert ran == [1]  # it returned after the I/O thread ran the command
        runner.join()
        # A command that raises still lets its poster go on at once.
        runner = threading.Thread(target=io_thread)
        runner.start()
        started = time.monotonic()
        mailbox.post_and_wait(divmod, 1, 0)
        assert time.monotonic() - started < 5.0
        runner.join()
        monkeypatch.undo()
        started = time.monotonic()
        mailbox.post_and_wait(ran.append, 2)  # no I/O thread runs it: the caller goes on
        assert time.monotonic() - started < 5.0
        assert ran == [1]
        mailbox.run_all()
        assert ran == [1, 2]
    finally:
        runner.join()
        mailbox.close()
    with pytest.raises(ClusterClosedError):
        mailbox.post_and_wait(ran.append, 3)
