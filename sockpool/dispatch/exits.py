"""The worker processes' pidfds, watched as one.

Each local worker's pidfd becomes readable when its process ends.  They sit
in one epoll set, so that the I/O loop polls a single descriptor, not one per
worker (with hundreds of workers, every wake-up of the loop paid for them
all), and asks the set which ones fired.
"""

from __future__ import annotations

import select


class ExitWatch:
    """Pidfds in an epoll set; :meth:`fileno` is readable while one of them is."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._fds: set[int] = set()

    def fileno(self) -> int:
        """The descriptor the I/O loop polls."""
        return self._epoll.fileno()

    def __contains__(self, fd: object) -> bool:
        return fd in self._fds

    def add(self, fd: int) -> None:
        """Watch a pidfd."""
        self._epoll.register(fd, select.EPOLLIN)
        self._fds.add(fd)

    def discard(self, fd: int) -> None:
        """Stop watching a pidfd (once it fired it stays readable), if it is watched."""
        if fd in self._fds:
            self._fds.discard(fd)
            self._epoll.unregister(fd)

    def ended(self) -> list[int]:
        """The watched pidfds that fired: their processes ended."""
        return [fd for fd, _ in self._epoll.poll(0)]

    def close(self) -> None:
        """Close the epoll set (the pidfds are their processes' to close)."""
        self._epoll.close()
