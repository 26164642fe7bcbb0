"""What a request may name as a voice, known in one place: OpenAI's voice names, blends of a model's voices
("af_bella+af_sky", weighted "af_bella(2)+af_sky(1)", as Kokoro-FastAPI takes them) and spoken languages.
Pure functions: the API checks a request with them, the speech executors synthesize from what they return."""

from __future__ import annotations

import re
from dataclasses import dataclass

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")

_PART = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\(\s*([0-9]*\.?[0-9]+)\s*\))?\s*$")
MAX_BLEND_PARTS = 8


@dataclass(frozen=True)
class BlendPart:
    voice: str
    weight: float


def is_blend(voice: str) -> bool:
    return "+" in voice or "(" in voice


def parse_blend(voice: str) -> list[BlendPart]:
    """`"a(2)+b(1)"` -> [a 2/3, b 1/3]: the weights, which default to 1, normalized to sum to 1.
    Raises ValueError saying what is wrong."""
    pieces = voice.split("+")
    if len(pieces) > MAX_BLEND_PARTS:
        raise ValueError(f"a blend takes at most {MAX_BLEND_PARTS} voices")
    parts = []
    for piece in pieces:
        match = _PART.match(piece)
        if match is None:
            raise ValueError(f"{piece.strip()!r} is not a voice or a voice(weight); write blends as "
                             "'af_bella+af_sky' or 'af_bella(2)+af_sky(1)'")
        parts.append(BlendPart(match.group(1), float(match.group(2) or 1)))
    total = sum(p.weight for p in parts)
    if total <= 0:
        raise ValueError("a blend's weights must not all be 0")
    return [BlendPart(p.voice, p.weight / total) for p in parts]


# A spoken language, as a request may name it (ISO 639-1, a BCP 47 tag, or the English name), -> its
# BCP 47 tag as the voices list gives it.
_LANGUAGES = {
    "en": "en-US", "en-us": "en-US", "english": "en-US", "en-gb": "en-GB", "en-uk": "en-GB",
    "british english": "en-GB", "es": "es", "es-es": "es", "spanish": "es", "fr": "fr-FR", "fr-fr": "fr-FR",
    "french": "fr-FR", "hi": "hi", "hi-in": "hi", "hindi": "hi", "it": "it", "it-it": "it", "italian": "it",
    "ja": "ja", "ja-jp": "ja", "japanese": "ja", "pt": "pt-BR", "pt-br": "pt-BR", "portuguese": "pt-BR",
    "zh": "zh", "zh-cn": "zh", "cmn": "zh", "chinese": "zh", "mandarin": "zh",
}


def language_tag(language: str) -> str | None:
    """The BCP 47 tag of a language a request names (None: not one we know)."""
    return _LANGUAGES.get(language.strip().lower().replace("_", "-"))


def known_languages() -> list[str]:
    return sorted(set(_LANGUAGES.values()))
