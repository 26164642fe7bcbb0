"""The coordinator's end of a worker pipe, bridged into asyncio.

A reader thread blocks on the pipe and hands each message to the event loop;
when the pipe closes (the worker died) it calls `on_closed` once.
"""

from __future__ import annotations

import asyncio
import threading
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
        self._send_lock = threading.Lock()
        self.closed = False
        self._reader = threading.Thread(target=self._read, name="pipe-reader", daemon=True)
        self._reader.start()

    def send(self, message: Any) -> bool:
        """Send if the pipe is still open; False when the worker is gone."""
        if self.closed:
            return False
        try:
            with self._send_lock:
                self._conn.send(message)
            return True
        except (OSError, EOFError, ValueError):
            return False

    def close(self) -> None:
        self.closed = True
        try:
            self._conn.close()
        except OSError:
            pass

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError, ValueError):
                break
            self._loop.call_soon_threadsafe(self._on_message, message)
        if not self.closed:
            self.closed = True
            self._loop.call_soon_threadsafe(self._on_closed)
