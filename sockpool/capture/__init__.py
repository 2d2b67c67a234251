"""Capture: the user's functions and values into payloads, on the master only.

- :mod:`.by_value`: the by-value rule (what a worker cannot import by name,
  so must receive by value) and the check of a pickle against it.
- :mod:`.pickling`: the master's pickling, task-function payloads and their digests;
  :mod:`.fingerprint` tells a function that would pickle as last time without
  pickling it, :mod:`.lineage` which payload one with large data is a version of.
- :mod:`.inspection`: ``inspect_capture``, and finding what cannot travel.
- :mod:`.payload`: the :class:`~.payload.Packer` the caller's side pickles
  with, turning failures into ``CaptureError`` messages; :mod:`.limits`, how
  much a function may carry.
- :mod:`.binding`: ``bind_to_env``.

A worker never imports this package.  This ``__init__`` imports nothing, so
that importing one of its modules stays cheap.

May import: ``common``, ``errors``, ``_version``.
"""
