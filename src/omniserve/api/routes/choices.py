"""One choice of a chat or text completion as its outputs arrive, for a stream or a whole answer.

A `Choice` keeps what the choice said (text, logprobs, audio) and turns each output into the pieces
due now: text as it comes (or held to the end, when it may be tool calls), audio as it comes, and
its end once both its text and its audio (when it speaks) have ended. Chat and completions render
the pieces in their own chunk shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omniserve.runtime.types import OmniOutput, TokenLogprob


@dataclass
class TextPiece:
    text: str
    logprobs: list[TokenLogprob] | None


@dataclass
class AudioPiece:
    data: bytes  # encoded in the answer's audio format
    transcript: str
    last: bool


@dataclass
class Ended:
    finish_reason: str


Piece = TextPiece | AudioPiece | Ended


@dataclass(eq=False)
class Choice:
    index: int
    hold_text: bool = False  # tool calls may be in the text: it goes out whole, at the end
    speaks: bool = False  # it ends when its audio has ended too
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    spoken: list[str] = field(default_factory=list)  # what its audio says, piece by piece
    finish_reason: str | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    _audio_ended: bool = False
    _ended: bool = False

    @property
    def full_text(self) -> str:
        return "".join(self.text)

    @property
    def spoken_text(self) -> str:
        return "".join(self.spoken).strip()

    def take(self, out: OmniOutput) -> list[Piece]:
        """A text output of this choice: the pieces due now."""
        self.text.append(out.text)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        pieces: list[Piece] = []
        if not self.hold_text and (out.text or out.logprobs):
            pieces.append(TextPiece(out.text, out.logprobs))
        if out.finish_reason:
            self.finish_reason = out.finish_reason
            self.completion_tokens = out.completion_tokens
            self.cached_tokens = out.cached_tokens
            pieces += self._end()
        return pieces

    def take_audio(self, data: bytes, transcript: str, last: bool) -> list[Piece]:
        """Encoded audio of this choice (and the text it speaks): the pieces due now."""
        self.audio += data
        self.spoken.append(transcript)
        pieces: list[Piece] = [AudioPiece(data, transcript, last)] if data or transcript or last else []
        if last:
            self._audio_ended = True
            pieces += self._end()
        return pieces

    def _end(self) -> list[Piece]:
        if self._ended or self.finish_reason is None or (self.speaks and not self._audio_ended):
            return []
        self._ended = True
        return [Ended(self.finish_reason)]
