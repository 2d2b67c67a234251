"""A task's StopIteration on its way to the caller, where Python would not let it pass.

Raised from a generator (a map's result stream), Python turns a StopIteration
into a RuntimeError (PEP 479); set on an asyncio future, it is refused
(TypeError, and the await never ends).  Wrapped in :class:`CarriedStopIteration`
it crosses both, and is raised as itself by the frame that hands it to the user.
"""

from __future__ import annotations


class CarriedStopIteration(Exception):
    """Carries ``error``, a task's StopIteration, to the frame that raises it."""

    def __init__(self, error: StopIteration) -> None:
        super().__init__(error)
        self.error = error
