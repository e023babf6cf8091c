"""A pipe that librdkafka writes to when a delivery report arrives, so the event loop serves reports
itself, with no thread and no GIL hand-off per report.

librdkafka can signal a queue's first event on a file descriptor (`rd_kafka_queue_io_event_enable`,
public C API); confluent-kafka does not expose it, so it is called here through ctypes on the
librdkafka the process has loaded. The `rd_kafka_t` handle is the first field after the object
header of confluent-kafka's `Producer` (its C `Handle` struct); `attach` checks it by asking
librdkafka for the handle's type and name, and returns None (the caller serves reports another way)
when anything does not match.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import suppress
from pathlib import Path

from confluent_kafka import Producer

_RD_KAFKA_PRODUCER = 0


def _load_librdkafka() -> ctypes.CDLL | None:
    """The librdkafka confluent-kafka loaded (its wheel's own copy, or the system's), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "librdkafka" in line and "/" in line}
    if len(paths) != 1:
        return None
    try:
        lib = ctypes.CDLL(paths.pop())  # already loaded: the same handle, not a second copy
        lib.rd_kafka_name.restype = ctypes.c_char_p
        lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_type.restype = ctypes.c_int
        lib.rd_kafka_type.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_queue_get_main.restype = ctypes.c_void_p
        lib.rd_kafka_queue_get_main.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_queue_io_event_enable.restype = None
        lib.rd_kafka_queue_io_event_enable.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        lib.rd_kafka_queue_destroy.restype = None
        lib.rd_kafka_queue_destroy.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lib


_LIB: ctypes.CDLL | None = None
_WAKE_BYTE = ctypes.create_string_buffer(b"r", 1)


def _producer_handle(lib: ctypes.CDLL, producer: Producer, client_id: str) -> int | None:
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)  # PyObject_HEAD
    if type(producer).__basicsize__ < header + ctypes.sizeof(ctypes.c_void_p):
        return None
    handle = ctypes.c_void_p.from_address(id(producer) + header).value
    if not handle or lib.rd_kafka_type(handle) != _RD_KAFKA_PRODUCER:
        return None
    name = lib.rd_kafka_name(handle) or b""
    return handle if name.decode(errors="replace").startswith(f"{client_id}#producer-") else None


class ReportWakeups:
    """`fd` becomes readable when the producer's report queue goes from empty to not empty (and once
    at the start); after `drain()` and a `poll(0)`, the next report makes it readable again."""

    def __init__(self, lib: ctypes.CDLL, queue: int, read_fd: int, write_fd: int) -> None:
        self._lib = lib
        self._queue: int | None = queue
        self.fd = read_fd
        self._write_fd = write_fd

    @classmethod
    def attach(cls, producer: Producer, client_id: str) -> ReportWakeups | None:
        global _LIB
        if _LIB is None:
            _LIB = _load_librdkafka()
        lib = _LIB
        if lib is None:
            return None
        handle = _producer_handle(lib, producer, client_id)
        if handle is None:
            return None
        queue = lib.rd_kafka_queue_get_main(handle)
        if not queue:
            return None
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)  # a full pipe already means "poll me"
        lib.rd_kafka_queue_io_event_enable(queue, write_fd, _WAKE_BYTE, 1)
        # librdkafka signals only when the queue goes from empty to not empty: whatever it held
        # already (a connection error, say) needs a poll first, so the pipe starts readable.
        os.write(write_fd, b"r")
        return cls(lib, queue, read_fd, write_fd)

    def drain(self) -> None:
        with suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, 4096):
                pass

    def close(self) -> None:
        """Stops the signals and releases the queue; before the producer is dropped."""
        if self._queue is None:
            return
        self._lib.rd_kafka_queue_io_event_enable(self._queue, -1, None, 0)
        self._lib.rd_kafka_queue_destroy(self._queue)
        self._queue = None
        os.close(self.fd)
        os.close(self._write_fd)
