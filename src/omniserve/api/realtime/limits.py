"""What realtime clients may take: the largest event, what one session may hold, and how many sessions may
be open at once. Each session holds a socket for as long as it lasts, so past some number the process would
have no file descriptors left, and every request (`/health` too) would fail: the limit is the server's
`--realtime-max-sessions`, lowered where the process's descriptor limit leaves less, so that `FD_RESERVE`
descriptors always stay for HTTP, the workers' pipes and files."""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

FD_RESERVE = 256
REALTIME = "realtime"  # the admission lane of the sessions' requests: they take turns with HTTP's
MAX_APPEND_BYTES = 15 * 1024 * 1024  # one input_audio_buffer.append, as at OpenAI
MAX_EVENT_BYTES = MAX_APPEND_BYTES * 4 // 3 + 1024 * 1024  # the largest frame: such an append, in base64, as JSON


@dataclass(frozen=True)
class SessionLimits:
    """What one session may hold, so that no client can take the server's memory: seconds of audio in the
    input buffer or in one item (the server's --max-audio-seconds, as for HTTP audio), and its conversation's
    items and bytes (text, image URLs and audio as kept, the input buffer included)."""

    max_audio_seconds: float = 600.0
    max_items: int = 1000
    max_bytes: int = 64 * 1024 * 1024


def open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: count nothing, the reserve still applies
        return 0


class SessionCount:
    def __init__(self, limit: int):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = soft - open_descriptors() - FD_RESERVE if soft != resource.RLIM_INFINITY else limit
        self.limit = max(1, min(limit, room))
        if self.limit < limit:
            log.warning("realtime sessions: at most %d, not %d (--realtime-max-sessions): the process may open %d "
                        "files (ulimit -n) and keeps %d for HTTP", self.limit, limit, soft, FD_RESERVE)
        self.open = 0

    def take(self) -> bool:
        """One more session, if there is room."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1
