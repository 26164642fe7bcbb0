"""Schemathesis hooks for `test_fuzz.py` (loaded with SCHEMATHESIS_HOOKS).

A run on 2 cores must stay short while every request is answered within a few seconds, so a
request's large but valid values (many output tokens, choices, long speech, many inputs, a video
job's frames and default size) are trimmed before it is sent. Cases meant to break the schema are
left alone, so that they still test that it is refused. A chat that sets no limit on its
tokens gets one (it would write up to the context's end).
"""

from __future__ import annotations

import schemathesis

SMALL = {"max_tokens": 24, "max_completion_tokens": 24, "n": 2}
SPEECH_CHARS = 40
EMBEDDING_INPUTS = 16
VIDEO_FRAMES = 4


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    for key, most in SMALL.items():
        if type(body.get(key)) is int and body[key] > most:
            body[key] = most
    if case.operation.path.startswith("/v1/videos") and not _negative(case):  # default: 32 frames of 720x1280
        body.setdefault("size", "128x128")
        frames = body.get("num_frames")
        if frames is None or type(frames) is int and VIDEO_FRAMES < frames <= 3600:  # still valid; without it,
            body["num_frames"] = VIDEO_FRAMES  # `seconds` times `fps` may be thousands
    if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = SMALL["max_tokens"]
    text = body.get("input")
    if isinstance(text, str) and len(text) > SPEECH_CHARS:
        body["input"] = text[:SPEECH_CHARS]
    elif isinstance(text, list) and len(text) > EMBEDDING_INPUTS:
        body["input"] = text[:EMBEDDING_INPUTS]


def _negative(case) -> bool:
    """A case meant to break the schema: left as it is, so that it still does."""
    mode = getattr(getattr(getattr(case, "meta", None), "generation", None), "mode", None)
    return str(getattr(mode, "value", mode)).lower() == "negative"

