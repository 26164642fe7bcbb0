"""Pure logic of the speech path: sentence cutting, transcript filling, audio codecs, pipe framing."""

from __future__ import annotations

import asyncio
import multiprocessing

import numpy as np
import pytest

from omniserve.errors import InvalidRequest
from omniserve.executors.sentence_speech import split_sentences
from omniserve.media.audio import AudioEncoder, decode_audio, encode_audio
from omniserve.runtime.transport import PipeTransport
from omniserve.runtime.types import audio_part, fill_media_parts, media_kinds
from tests.audio_helpers import decode


def test_an_answer_opens_with_a_clause_or_a_few_words():
    # the first chunk of an answer need not wait for the end of its sentence
    assert split_sentences("Well, cats are", final=False, opening=True) == ([], "Well, cats are")  # 1 word
    assert split_sentences("Cats are small, and", final=False, opening=True) == (["Cats are small, "], "and")
    words = "one two three four five six seven eight nine"
    assert split_sentences(words, final=False, opening=True) == (["one two three four five six seven eight "],
                                                                 "nine")
    assert split_sentences("one two three four five six seven eight", final=False, opening=True)[0] == []
    assert split_sentences("Cats are small, and", final=False) == ([], "Cats are small, and")  # later: sentences
    assert split_sentences("Hi. Cats are small, and", final=False, opening=True) == (["Hi. "], "Cats are small, and")


def test_split_sentences_streaming():
    done, rest = split_sentences("Hello there. How are", final=False)
    assert done == ["Hello there. "] and rest == "How are"
    done, rest = split_sentences(rest + " you? Fine", final=True)
    assert done == ["How are you? ", "Fine"] and rest == ""
    assert split_sentences("3.14 is pi", final=False) == ([], "3.14 is pi")  # no space after the dot
    long = "word " * 200
    done, rest = split_sentences(long, final=False)
    assert done and all(len(d) <= 300 for d in done)


def test_fill_audio_parts_keeps_order():
    messages = [{"role": "user", "content": [{"type": "text", "text": "Before"}, audio_part(0),
                                              {"type": "text", "text": "after"}, audio_part(1)]}]
    assert media_kinds(messages) == {"audio"} and not media_kinds([{"role": "user", "content": "x"}])
    filled = fill_media_parts(messages, {("audio", 0): " one ", ("audio", 1): "two"})
    assert filled[0]["content"] == "Before one after two"


def tone(seconds: float, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 330 * t) * 8000).astype(np.int16).tobytes()


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac", "opus", "aac"])
def test_encode_then_decode(fmt):
    data = encode_audio(tone(1.0), 22050, fmt)
    _, seconds, _ = decode(data)
    assert abs(seconds - 1.0) < 0.1
    samples = decode_audio(data, where="file", max_seconds=10)
    assert abs(len(samples) / 16000 - 1.0) < 0.1 and samples.dtype == np.float32


def test_streamed_encoding_equals_whole():
    encoder = AudioEncoder("wav", 22050)
    parts = [encoder.write(tone(0.3)) for _ in range(3)] + [encoder.close()]
    assert sum(1 for p in parts if p) >= 2
    assert abs(decode(b"".join(parts))[1] - 0.9) < 0.05
    assert AudioEncoder("pcm", 22050).write(b"\x01\x00") == b"\x01\x00"


def test_decode_errors_name_the_item():
    for data in (b"", b"garbage" * 100):
        with pytest.raises(InvalidRequest) as exc:
            decode_audio(data, where="messages[0].content[1]", max_seconds=10)
        assert exc.value.param == "messages[0].content[1]" and "wav" in exc.value.message
    with pytest.raises(InvalidRequest, match="longer than"):
        decode_audio(encode_audio(tone(2.0), 22050, "wav"), where="file", max_seconds=1)


def _echo(conn):
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(message)


def test_transport_frames_large_messages():
    """Messages far larger than the pipe buffer cross intact both ways without blocking the loop."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(child,), daemon=True)
    proc.start()
    payloads = [b"a" * 3_000_000, b"b" * 10, bytes(range(256)) * 5000]

    async def main():
        got: list = []
        done = asyncio.get_running_loop().create_future()

        def on_message(m):
            got.append(m)
            if len(got) == len(payloads):
                done.set_result(None)

        transport = PipeTransport(parent, asyncio.get_running_loop(), on_message, lambda: None)
        for p in payloads:
            assert transport.send(("x", p))
        await asyncio.wait_for(done, 30)
        transport.send(None)
        return got

    got = asyncio.run(main())
    assert [m[1] for m in got] == payloads
    proc.join(5)
