"""How the coordinator reaches a stage worker: the `Transport` interface, and `PipeTransport`, the
coordinator's end of a worker pipe, driven by the event loop. Another transport (a Ray actor, shared
memory for large tensors) implements the same three members and the coordinator does not change.

The loop watches the pipe's file descriptor, so a worker's message is handled
with one wake-up and no thread hand-off; when the pipe closes (the worker
died) `on_closed` is called once.

The descriptor is non-blocking on this side, so messages larger than the
pipe buffer (audio, for one) are framed here, in multiprocessing's own format
(a 4-byte big-endian length, or -1 and an 8-byte length, then the pickle):
reads gather partial frames and writes queue what the pipe cannot take yet.
The worker's end stays a plain blocking `Connection`.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol

from omniserve.runtime.messages import FromWorker, ToWorker

READ_SIZE = 1 << 20  # bytes a read takes from the pipe at most


class Transport(Protocol):
    """One stage worker's channel: messages to it with `send`; its messages arrive through the
    `on_message` callback given at creation, and its loss through `on_closed` (once)."""

    closed: bool

    def send(self, message: ToWorker) -> bool:
        """Queue a message; False when the worker is gone."""

    def close(self) -> None: ...

    def lost(self) -> None:
        """The worker is gone though the channel did not say so (its Ray node lost without a word): close it as if
        it had, calling `on_closed`."""


class PipeTransport:
    def __init__(
        self,
        conn: Connection,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[FromWorker], None],
        on_closed: Callable[[], None],
    ):
        self._conn = conn
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self.closed = False
        self._fd = conn.fileno()
        os.set_blocking(self._fd, False)
        self._inbox = bytearray()
        # what each read lands in: one buffer for the pipe's life, as a fresh 1 MiB one per read (most carry one
        # token) would be mapped and unmapped each time (the server keeps glibc's mmap threshold at 128 KiB)
        self._landing = memoryview(bytearray(READ_SIZE))
        self._outbox: deque[memoryview] = deque()
        loop.add_reader(self._fd, self._read)

    def send(self, message: ToWorker) -> bool:
        """Queue a message if the pipe is still open; False when the worker is gone."""
        if self.closed:
            return False
        data = ForkingPickler.dumps(message)
        header = struct.pack("!i", len(data)) if len(data) <= 0x7FFFFFFF else struct.pack("!iQ", -1, len(data))
        idle = not self._outbox
        self._outbox.append(memoryview(header + bytes(data)))
        if idle:
            self._write()
        return not self.closed

    def _write(self) -> None:
        try:
            while self._outbox:
                head = self._outbox[0]
                written = os.write(self._fd, head)
                if written < len(head):
                    self._outbox[0] = head[written:]
                    break
                self._outbox.popleft()
        except BlockingIOError:
            pass
        except OSError:
            self.lost()
            return
        if self._outbox:
            self._loop.add_writer(self._fd, self._write)
        else:
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._detach()

    def _detach(self) -> None:
        try:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        except (OSError, ValueError):
            pass
        try:
            self._conn.close()
        except OSError:
            pass

    def _read(self) -> None:
        """Handle what arrived; on EOF, what the worker said before it went comes first (its last outputs)."""
        gone = False
        try:
            while True:
                size = os.readv(self._fd, [self._landing])
                if not size:  # EOF: the worker is gone
                    gone = True
                    break
                self._inbox += self._landing[:size]
        except BlockingIOError:
            pass
        except OSError:
            gone = True
        for message in self._frames():
            self._on_message(message)
            if self.closed:
                return
        if gone:
            self.lost()

    def _frames(self) -> list[Any]:
        out, buf, pos = [], self._inbox, 0
        while len(buf) - pos >= 4:
            (size,) = struct.unpack_from("!i", buf, pos)
            start = pos + 4
            if size == -1:
                if len(buf) - pos < 12:
                    break
                (size,) = struct.unpack_from("!Q", buf, start)
                start += 8
            if len(buf) - start < size:
                break
            out.append(ForkingPickler.loads(buf[start:start + size]))
            pos = start + size
        del buf[:pos]
        return out

    def lost(self) -> None:
        if not self.closed:
            self.closed = True
            self._detach()
            self._on_closed()
