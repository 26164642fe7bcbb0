"""Turn a stream of token bytes into safe text deltas.

Two things make this subtle: a UTF-8 character can be split across tokens,
and a stop string can be split across tokens. We decode incrementally and
hold back any tail that might still grow into a stop string, so a stop is
matched across token boundaries and never leaks into the output.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: list[str] | None = None):
        self._stops = [s for s in (stops or []) if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(piece)
        cut = self._earliest_stop(text)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The request ended without a stop: release whatever was held back."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _earliest_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(hits) if hits else None

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:length]):
                    best = length
                    break
        return best
