"""The coordinator's end of a worker pipe, driven by the event loop.

The loop watches the pipe's file descriptor, so a worker's message is handled
with one wake-up and no thread hand-off; when the pipe closes (the worker
died) `on_closed` is called once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class PipeTransport:
    def __init__(
        self,
        conn: Connection,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Any], None],
        on_closed: Callable[[], None],
    ):
        self._conn = conn
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self.closed = False
        loop.add_reader(conn.fileno(), self._read)

    def send(self, message: Any) -> bool:
        """Send if the pipe is still open; False when the worker is gone."""
        if self.closed:
            return False
        try:
            self._conn.send(message)
            return True
        except (OSError, EOFError, ValueError):
            return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._detach()

    def _detach(self) -> None:
        try:
            self._loop.remove_reader(self._conn.fileno())
        except (OSError, ValueError):
            pass
        try:
            self._conn.close()
        except OSError:
            pass

    def _read(self) -> None:
        try:
            while self._conn.poll(0):
                self._on_message(self._conn.recv())
                if self.closed:
                    return
        except (EOFError, OSError, ValueError):
            if not self.closed:
                self.closed = True
                self._detach()
                self._on_closed()
