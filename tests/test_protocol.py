"""Wire format and serialization units: headers, task frames, out-of-band buffers."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from sockpool.capture import pickling
from sockpool.common import codec, protocol, task_errors, wire
from sockpool.common.protocol import Kind, ProtocolError

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("frames_know_more", [True, False])  # False: pyzmq's cffi backend
def test_a_message_is_received_whole_small_frames_as_bytes_the_rest_as_frames(
        monkeypatch: pytest.MonkeyPatch, frames_know_more: bool) -> None:
    monkeypatch.setattr(wire, "_FRAMES_KNOW_MORE", frames_know_more)
    context = zmq.Context()
    try:
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        pull.bind("inproc://messages")
        push.connect("inproc://messages")
        push.send_multipart([b"id", b"head", b"x" * 100_000])
        push.send(b"alone")
        first = wire.recv_message(pull, small_frames=2)
        assert first[:2] == [b"id", b"head"]
        assert isinstance(first[2], zmq.Frame) and bytes(first[2].buffer) == b"x" * 100_000
        assert wire.recv_message(pull) == [b"alone"]  # not the rest of the one before
        with pytest.raises(zmq.Again):
            wire.recv_message(pull, zmq.NOBLOCK)
    finally:
        context.destroy(linger=0)


def test_header_round_trip() -> None:
    frame = protocol.header(Kind.RESULT, 9, 1234, 2**40 + 5) + b"body"
    head, body = protocol.parse(frame)
    assert head == protocol.Header(Kind.RESULT, 9, 1234, 2**40 + 5)
    assert bytes(body) == b"body"


@pytest.mark.parametrize("frame", [
    b"", b"\x01",  # too short
    bytes([protocol.PROTOCOL_VERSION + 1]) + b"\x02" * 15,  # a wrong version
    bytes([protocol.PROTOCOL_VERSION, 99]) + b"\0" * 14,  # an unknown kind
])
def test_malformed_headers_are_rejected(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse(frame)


def test_task_frame_round_trip() -> None:
    head = protocol.header(Kind.TASK, 0, 1, 2)
    frame = protocol.task_frame(head, b"d" * 16, 77, b"function", 3, b"arguments")
    parsed, body = protocol.parse(frame)
    task = protocol.parse_task(body)
    assert (parsed.kind, task.digest, task.first_index, bytes(task.fn_inband), task.fn_buffers,
            bytes(task.arguments)) == (Kind.TASK, b"d" * 16, 77, b"function", 3, b"arguments")


def test_truncated_task_frames_are_rejected() -> None:
    frame = protocol.task_frame(protocol.header(Kind.TASK), b"d" * 16, 0, b"f" * 100, 0, b"")
    _, body = protocol.parse(frame[:-50])
    with pytest.raises(ProtocolError):
        protocol.parse_task(body)
    with pytest.raises(ProtocolError):
        protocol.parse_task(memoryview(b"short"))


def test_identities() -> None:
    assert protocol.parse_identity(protocol.data_identity(7)) == (protocol.DATA_PREFIX, 7)
    assert protocol.parse_identity(protocol.control_identity(7)) == (protocol.CONTROL_PREFIX, 7)
    with pytest.raises(ProtocolError):
        protocol.parse_identity(b"X\0\0\0\0")


def test_large_buffers_travel_out_of_band_and_small_ones_in_band() -> None:
    big = np.arange(100_000, dtype=np.int64)
    small = np.arange(10)
    frames = codec.dumps({"big": big, "small": small}, prefix=b"HDR")
    assert bytes(frames[0][:3]) == b"HDR"
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == big.nbytes
    back = codec.loads(memoryview(frames[0])[3:], [bytearray(frames[1])])
    np.testing.assert_array_equal(back["big"], big)
    np.testing.assert_array_equal(back["small"], small)


@pytest.mark.parametrize("serializer", ["cloudpickle", "dill", "pickle"])
def test_a_memmap_travels_out_of_band_as_the_ndarray_it_views(
        tmp_path: Path, serializer: str) -> None:
    saved = np.lib.format.open_memmap(tmp_path / "data.npy", mode="w+", dtype="f8",
                                      shape=(1_000, 1_000))
    saved[:] = np.arange(1_000_000).reshape(1_000, 1_000)
    saved.flush()
    mapped = np.load(tmp_path / "data.npy", mmap_mode="r")
    frames = codec.dumps({"data": mapped, "rows": [mapped[:500], 5]}, serializer)
    assert len(frames) == 3 and len(frames[0]) < 1_000  # the data is not copied into the pickle
    back = codec.loads(frames[0], frames[1:])
    assert type(back["data"]) is np.ndarray and back["data"].shape == (1_000, 1_000)
    assert np.array_equal(back["data"], saved) and np.array_equal(back["rows"][0], saved[:500])


def test_copy_buffers_detaches_from_the_caller() -> None:
    data = np.zeros(100_000)
    frames = codec.dumps(data, copy_buffers=True)
    data[0] = 42.0
    assert codec.loads(frames[0], frames[1:])[0] == 0.0


def test_objects_of_main_never_travel_by_reference() -> None:
    import __main__

    class Local:
        pass

    Local.__module__ = "__main__"
    Local.__qualname__ = "Local"
    __main__.Local = Local  # type: ignore[attr-defined]
    try:
        payload = bytes(pickling.dumps(Local())[0])
        # Plain pickle would store a reference to __main__.Local, which a worker
        # cannot import; the payload must carry the class itself.
        del __main__.Local  # type: ignore[attr-defined]
        assert type(pickle.loads(payload)).__name__ == "Local"
    finally:
        vars(__main__).pop("Local", None)


def test_exceptions_pack_with_their_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        packed = task_errors.pack_exception(exc)
    error = task_errors.unpack_exception(packed, "a note")
    assert isinstance(error, KeyError) and error.args == ("missing",)
    assert "raise KeyError" in str(error.__cause__)
    assert getattr(error, "__notes__", None) == ["a note"]


def test_a_function_digest_changes_when_its_captured_buffer_changes_in_place() -> None:
    data = np.zeros(1024 * 1024)  # 8 MB: out of band, checksummed rather than hashed in-band

    def read(i: int) -> float:
        return float(data[i])

    first, _ = pickling.dumps_function(read)
    again, _ = pickling.dumps_function(read)
    data[-1] = 1.0
    changed, _ = pickling.dumps_function(read)
    assert first.digest == again.digest
    assert changed.digest != first.digest
    assert len(first.buffers) == 1  # the array travels out of band, uncopied


def test_a_packed_traceback_leaves_out_sockpools_own_frames() -> None:
    class Refuses:
        def __reduce__(self) -> Any:
            raise RuntimeError("no pickling")

    def user_code() -> None:
        codec.dumps(Refuses())  # through sockpool's frames to the user's __reduce__

    try:
        user_code()
    except RuntimeError as exc:
        packed = task_errors.pack_exception(exc)
    error = task_errors.unpack_exception(packed, "a note")
    text = str(error.__cause__)
    assert "in user_code" in text and "in __reduce__" in text
    assert "codec.py" not in text  # as IPython leaves out __tracebackhide__ frames
    frames = error.__cause__.frames  # also as data, for the master to complete
    assert [name for _, _, name, _ in frames][:2] == [
        "test_a_packed_traceback_leaves_out_sockpools_own_frames", "user_code"]
    assert frames[-1][2:] == ("__reduce__", 'raise RuntimeError("no pickling")')
    package = str(Path(codec.__file__).parent.parent)
    assert not any(filename.startswith(package) for filename, _, _, _ in frames)


class _Point:
    def __init__(self, x: int) -> None:
        self.x = x


def _first(point: _Point) -> Any:
    return (str, ("first",))


def _second(point: _Point) -> Any:
    return (str, ("second",))


@pytest.mark.parametrize("serializer", ["cloudpickle", "pickle"])
def test_a_copyreg_reducer_registered_again_is_the_one_used(serializer: str) -> None:
    import copyreg

    assert np.memmap  # NumPy loaded: the memmap reducer joins copyreg's
    try:
        copyreg.pickle(_Point, _first)
        frames = codec.dumps(_Point(1), serializer)
        assert codec.loads(frames[0], frames[1:]) == "first"
        copyreg.pickle(_Point, _second)  # the same number of reducers, another one
        frames = codec.dumps(_Point(1), serializer)
        assert codec.loads(frames[0], frames[1:]) == "second"
    finally:
        copyreg.dispatch_table.pop(_Point, None)


class Registered:
    """A class whose copyreg reducer a test registers."""

    def __init__(self, value: int) -> None:
        self.value = value


def _as_tuple(obj: Registered) -> Any:
    return tuple, ((obj.value, "by copyreg"),)


def test_a_copyreg_reducer_registered_after_a_first_pickle_is_used_by_cloudpickle() -> None:
    # cloudpickle's reducers are looked up in a dict made from copyreg's (a ChainMap
    # cost a Python call per object): it must be made again when copyreg's change.
    import copyreg

    def dumped(obj: Any) -> Any:
        return codec.loads(*codec.dumps(obj, "cloudpickle", standard_first=False))

    assert dumped(Registered(1)).value == 1
    copyreg.pickle(Registered, _as_tuple)
    try:
        assert dumped(Registered(2)) == (2, "by copyreg")
    finally:
        del copyreg.dispatch_table[Registered]
    assert dumped(Registered(3)).value == 3


def test_a_reducer_added_to_cloudpicklers_own_table_after_a_first_pickle_is_used() -> None:
    # cloudpickle's documented way to add reducers: its dispatch_table (a ChainMap
    # whose writes land in its own dict, not copyreg's).
    import cloudpickle

    def dumped(obj: Any) -> Any:
        return codec.loads(*codec.dumps(obj, "cloudpickle", standard_first=False))

    assert dumped(Registered(1)).value == 1
    cloudpickle.CloudPickler.dispatch_table[Registered] = _as_tuple
    try:
        assert dumped(Registered(2)) == (2, "by copyreg")
    finally:
        del cloudpickle.CloudPickler.dispatch_table[Registered]
    assert dumped(Registered(3)).value == 3
