"""Tool calls as the chat model writes them (the Hermes format, see `api/protocol/tools.py`), and cutting them
out of an answer's text as it streams, so that a voice never reads a call aloud."""

from __future__ import annotations

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


def _partial(text: str, tag: str) -> int:
    """How long the longest end of `text` is that could be the start of `tag`."""
    return next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if text.endswith(tag[:n])), 0)


class CallFilter:
    """An answer's text, streamed in pieces, less its call blocks: what is outside them comes out as soon as it
    cannot be the start of one; a block still open when the text ends (cut short, or malformed) is dropped, and so
    is an opening tag cut short (`<tool_` at the very end: a call that `max_tokens` cut). So what is held at
    the end is never said, and there is nothing to flush."""

    def __init__(self) -> None:
        self._held = ""
        self._in_call = False
        self.calls = 0  # blocks begun

    def push(self, text: str) -> str:
        text, self._held = self._held + text, ""
        out = []
        while text:
            tag = CALL_CLOSE if self._in_call else CALL_OPEN
            at = text.find(tag)
            if at < 0:
                keep = _partial(text, tag)
                if not self._in_call:
                    out.append(text[:len(text) - keep])
                self._held = text[len(text) - keep:]
                break
            if not self._in_call:
                out.append(text[:at])
                self.calls += 1
            self._in_call = not self._in_call
            text = text[at + len(tag):]
        return "".join(out)

