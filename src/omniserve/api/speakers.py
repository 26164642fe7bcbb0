"""Which served voice model speaks a request, and with which of its voices: one answer for speech, chat
and realtime. A voice is a model's own name (any case), an OpenAI name (each model maps them to its
voices), a blend of its voices where the model blends, or a custom voice of the voice library (its id or
name), which only a model that clones speaks. With no model named, the first voice model that has the
voice speaks (the first of all for no voice, or an OpenAI name)."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from omniserve.errors import InvalidRequest
from omniserve.runtime.client import Client, ServedModel
from omniserve.voice_library.store import CustomVoice, VoiceLibrary
from omniserve.voices import OPENAI_VOICES, is_blend, parse_blend


def voice_names(model: ServedModel) -> list[str]:
    """The model's own voices, its default first."""
    return list(model.facts.voices or [])


def speakers(client: Client) -> list[ServedModel]:
    return [m for m in client.served_models if m.kind == "tts"]


class Speakers:
    """The served voice models and the voice library, as one request sees them."""

    def __init__(self, client: Client, library: VoiceLibrary | None = None):
        self.client = client
        self.library = library
        self.models = speakers(client)

    @classmethod
    def of(cls, conn: HTTPConnection) -> Speakers:
        return cls(conn.app.state.client, getattr(conn.app.state, "voice_library", None))

    def custom_voice(self, voice: str | None, param: str = "voice") -> CustomVoice | None:
        """The library's voice that `voice` names (id or name), None if none; a 400 if it is disabled."""
        if self.library is None or voice is None:
            return None
        found = self.library.voice(voice)
        if found is not None and found.disabled:
            raise InvalidRequest(f"{param}: the custom voice {found.id} ({found.name}) no longer speaks: the consent "
                                 "it was made under was deleted", param=param, code="voice_disabled")
        return found

    def pick(self, voice: str | None, param: str = "voice") -> ServedModel | None:
        """The voice model that speaks `voice` when the request names no model (None: no voice model is
        served); a 400 naming every valid voice if none has it."""
        if (custom := self.custom_voice(voice, param)) is not None:
            return self._cloner(None, custom, param)
        if not self.models or voice is None:
            return self.models[0] if self.models else None
        for model in self.models:
            if _find_voice(model, voice) is not None:
                return model
        valid = "; ".join(f"{m.id}: {_valid_voices(m)}" for m in self.models)
        raise InvalidRequest(f"{param}: unknown voice {voice!r}. Valid voices, by model: {valid}", param=param)

    def resolve(self, model: ServedModel, voice: str | None, param: str = "voice") -> str:
        """The voice `model` speaks for `voice` (a custom voice: its id); a 400 naming the valid ones if it has
        none."""
        if (custom := self.custom_voice(voice, param)) is not None:
            self._cloner(model, custom, param)
            return custom.id
        return resolve_voice(model, voice, param)

    def _cloner(self, model: ServedModel | None, voice: CustomVoice, param: str) -> ServedModel:
        """The model that speaks a custom voice: `model` if it clones, else (none named) the first that does."""
        cloners = [m for m in self.models if m.facts.clones]
        if model in cloners or (model is None and cloners):
            return model or cloners[0]
        what = f"the model {model.id} cannot clone a voice" if model else "no voice model here can clone"
        which = ", ".join(m.id for m in cloners) or "none is served (Pocket TTS clones: --tts-model POCKET_TTS_DIR)"
        raise InvalidRequest(f"{param}: {voice.id} ({voice.name}) is a custom voice and {what}; models that clone: "
                             f"{which}", param=param, code="voice_needs_cloning")


def resolve_voice(model: ServedModel, voice: str | None, param: str = "voice") -> str:
    """The built-in voice `model` speaks for `voice`; a 400 naming the valid ones if it has none."""
    found = _find_voice(model, voice)
    if found is None:
        raise InvalidRequest(f"{param}: unknown voice {voice!r}; {_valid_voices(model)}", param=param)
    return found


def _find_voice(model: ServedModel, voice: str | None) -> str | None:
    installed = voice_names(model)
    if voice is None:
        return installed[0] if installed else None
    if voice.lower() in OPENAI_VOICES:
        return (model.facts.openai_voices or {}).get(voice.lower()) or (installed[0] if installed else voice)
    match = next((name for name in installed if name.lower() == voice.lower()), None)
    if match is not None or not is_blend(voice) or not model.facts.blends:
        return match
    try:
        parts = parse_blend(voice)
    except ValueError as exc:
        raise InvalidRequest(f"voice: {exc}", param="voice") from None
    names = [_find_voice(model, part.voice) if not is_blend(part.voice) else None for part in parts]
    if None in names:
        return None
    return "+".join(f"{name}({part.weight!r})" for name, part in zip(names, parts, strict=True))


def _valid_voices(model: ServedModel) -> str:
    blends = " or a blend of them such as 'af_bella(2)+af_sky(1)'" if model.facts.blends else ""
    return f"valid voices are {', '.join(voice_names(model) + list(OPENAI_VOICES))}{blends}"
