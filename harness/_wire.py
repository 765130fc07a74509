"""The message format between the evaluator and a model's process.

A message is one JSON header followed by one raw buffer per array it names. Nothing is ever
unpickled on the evaluator's side: a model's process is untrusted, and a pickle from it could run
code in the process that holds the truth. Arrays arrive as fresh, read-only arrays that own their
memory, of a few plain dtypes only.
"""

from __future__ import annotations

import array
import json
import math
import socket
import time
from typing import Any

import numpy as np

__all__ = ["DTYPES", "SHARED_MIN", "Channel", "Scratch", "WireError", "decode", "encode", "frame", "framed",
           "receive", "send"]

#: The only dtypes that cross the boundary.
DTYPES = frozenset({"float64", "float32", "int64", "int32", "int8", "bool"})
_MAX_HEADER = 1 << 20
#: Arrays from this size go through a shared answer segment when the sender has one.
SHARED_MIN = 1 << 20
_NAMES = {np.dtype(name): name for name in DTYPES}
_TYPES = {name: np.dtype(name) for name in DTYPES}


class WireError(Exception):
    """A message that does not follow the format (from a broken or hostile model process)."""


class Channel:
    """Length-prefixed frames over a connected Unix socket; :meth:`send_frames` writes several
    frames in one system call."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        #: Seconds to poll for the next frame before sleeping in ``recv`` (see :meth:`poll`).
        self.spin = 0.0
        #: What the last :meth:`poll` of :meth:`recv_frame` returned.
        self.seen: float | None = None

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_frames(self, frames: list[bytearray]) -> None:
        """Write messages made by :func:`frame`."""
        self.sock.sendall(framed(frames))

    def send_some(self, data: bytes | memoryview, *, wait: bool) -> int:
        """Write ``data`` and return how many bytes went; without ``wait``, only as many as the
        socket takes at once (possibly none)."""
        if wait:
            self.sock.sendall(data)
            return len(data)
        try:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def send_fd(self, fd: int, *, wait: bool) -> bool:
        """Hand file descriptor ``fd`` over as ``multiprocessing.reduction.send_handle`` does (the
        other side takes it with ``recv_handle``); without ``wait``, False if the socket is full."""
        fds = array.array("i", [fd])
        try:
            self.sock.sendmsg([bytes([1])], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)],
                              0 if wait else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    def recv_frame(self, limit: int | None = None) -> bytearray:
        self.seen = self.poll(self.spin) if self.spin else None
        size = int.from_bytes(self._exactly(8), "little")
        if limit is not None and size > limit:
            raise WireError(f"a frame of {size} bytes exceeds the limit of {limit}")
        return self._exactly(size)

    def poll(self, seconds: float) -> float | None:
        """Return as soon as a frame starts arriving, or after ``seconds``. A process that has a
        core to itself polls instead of sleeping: on a virtual machine, waking a sleeping CPU
        costs more than a small model's whole answer. Returns when the frame was seen
        (``perf_counter``), 0.0 if it was there at once, None if it did not come in time."""
        sock, clock = self.sock, time.perf_counter
        deadline = clock() + seconds
        first = True
        while first or clock() < deadline:
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                # data, or the other side closed: the read that follows sees which
                return 0.0 if first else clock()
            except BlockingIOError:
                first = False
        return None

    def _exactly(self, n: int) -> bytearray:
        buffer = bytearray(n)
        view, got = memoryview(buffer), 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise EOFError("the other side closed the channel")
            got += k
        return buffer

    def close(self) -> None:
        self.sock.close()


def frame(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
          segment: np.ndarray | None = None) -> bytearray:
    """One message as the channel writes it, in one buffer (the arrays copied once): its length
    (8 bytes), the header's length (4 bytes), the header as JSON, then the arrays' bytes.

    With a ``segment`` (the writable bytes of a memory segment the receiver maps, see
    :meth:`harness.sandbox.ModelProcess.share_answers`), arrays of :data:`SHARED_MIN` bytes or
    more that fit are written there instead, and the header gives their offset."""
    parts = [np.ascontiguousarray(a) for a in (arrays or {}).values()]
    entries: list[list[Any]] = []
    inline: list[np.ndarray] = []
    at = 0
    for key, a in zip(arrays or {}, parts):
        entry: list[Any] = [key, _NAMES.get(a.dtype) or a.dtype.name, a.shape]
        if segment is not None and a.nbytes >= SHARED_MIN and at + a.nbytes <= len(segment):
            segment[at:at + a.nbytes] = a.reshape(-1).view(np.uint8)
            entry.append(at)
            at += _aligned(a.nbytes)
        else:
            inline.append(a)
        entries.append(entry)
    if entries:
        header = {**header, "arrays": entries}
    head = json.dumps(header, allow_nan=True).encode()
    size = 4 + len(head) + sum(a.nbytes for a in inline)
    out = bytearray(8 + size)
    out[:8], out[8:12] = size.to_bytes(8, "little"), len(head).to_bytes(4, "little")
    out[12:12 + len(head)] = head
    offset = 12 + len(head)
    for a in inline:
        np.frombuffer(out, np.uint8, a.nbytes, offset)[:] = a.reshape(-1).view(np.uint8)
        offset += a.nbytes
    return out


def _aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to a cache line: where the next shared array starts."""
    return -(-nbytes // 64) * 64


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One message without the channel's length prefix (as :func:`decode` reads it)."""
    return bytes(memoryview(frame(header, arrays))[8:])


def framed(frames: list[bytearray]) -> bytes | bytearray:
    """Messages made by :func:`frame`, as one buffer to write."""
    return frames[0] if len(frames) == 1 else b"".join(frames)


def send(chan: Channel, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
         segment: np.ndarray | None = None) -> None:
    """Send ``header`` (JSON values) and ``arrays`` as one frame (see :func:`frame`)."""
    chan.send_frames([frame(header, arrays, segment)])


def receive(chan: Channel, max_bytes: int | None = None, *, own: bool = True,
            segment: Any = None, into: Scratch | None = None
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Receive one frame: its header and its arrays (read-only; each owning its memory unless
    ``own`` is false, when they are views of the frame that holds this message only).

    Arrays the sender wrote to the shared ``segment`` (this side's read-only mapping) are copied
    out of it at once, into ``into`` when given (so they are valid until its next use), else into
    fresh arrays: the sender can write the segment at any time, so nothing reads it twice.

    Raises :class:`WireError` for anything that does not follow the format, ``EOFError`` when
    the other side has gone.
    """
    data = chan.recv_frame(None if max_bytes is None else max_bytes + _MAX_HEADER)
    return decode(data, own=own, segment=segment, into=into)


class Scratch:
    """Memory reused for the arrays of successive messages read from a shared segment (fresh
    memory would cost a page fault per 4 KiB on every message)."""

    def __init__(self) -> None:
        self.buffer = np.empty(0, np.uint8)

    def take(self, nbytes: int, used: int) -> np.ndarray:
        """``nbytes`` of the buffer from ``used`` on, growing it (and dropping what it held)
        when it is too small."""
        if used + nbytes > len(self.buffer):
            self.buffer = np.empty(max(used + nbytes, 2 * len(self.buffer)), np.uint8)
        return self.buffer[used:used + nbytes]


def decode(frame: bytes | bytearray, *, own: bool = True, segment: Any = None,
           into: Scratch | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and arrays of one frame made by :func:`encode` (see :func:`receive`)."""
    size = int.from_bytes(frame[:4], "little")
    if len(frame) < 4 or size > _MAX_HEADER or 4 + size > len(frame):
        raise WireError("a frame is shorter than its header says")
    try:
        header = json.loads(frame[4:4 + size])
    except ValueError as exc:
        raise WireError(f"a message header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("a message header is not a JSON object")
    arrays: dict[str, np.ndarray] = {}
    offset, used = 4 + size, 0
    for entry in header.pop("arrays", []):
        try:
            key, dtype, shape, *where = entry
            shape = tuple(map(int, shape))
            at = int(where[0]) if where else None
        except (TypeError, ValueError):
            raise WireError(f"malformed array entry {entry!r}") from None
        kind = _TYPES.get(dtype) if type(dtype) is str else None
        if kind is None or min(shape, default=0) < 0 or len(where) > 1:
            raise WireError(f"array {key!r}: dtype {dtype!r} or shape {shape} is not allowed")
        nbytes = math.prod(shape) * kind.itemsize
        if at is not None:
            if segment is None or at < 0 or at + nbytes > len(segment):
                raise WireError(f"array {key!r}: {nbytes} bytes at {at} are not in a shared segment")
            source = np.ndarray(shape, kind, segment, at)
            if into is not None:
                array = into.take(nbytes, used).view(kind).reshape(shape)
                used += _aligned(nbytes)
                np.copyto(array, source)
            else:
                array = source.copy()
        else:
            if offset + nbytes > len(frame):
                raise WireError(f"array {key!r}: the frame ends before its {nbytes} bytes")
            array = np.ndarray(shape, kind, frame, offset)
            if own:
                array = array.copy()
            offset += nbytes
        array.flags.writeable = False
        arrays[str(key)] = array
    if offset != len(frame):
        raise WireError(f"a frame has {len(frame) - offset} bytes after its last array")
    return header, arrays
