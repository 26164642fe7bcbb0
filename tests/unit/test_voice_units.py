"""Voice names, blends and languages (omniserve.voices), which voice model speaks a request
(api/speakers.py), and the check of Kokoro's voice files at install."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from omniserve.api.speakers import Speakers, resolve_voice
from omniserve.errors import ConfigError, InvalidRequest
from omniserve.models.kokoro import VOICE_BYTES, read_sdist_voices
from omniserve.runtime.client import ServedModel
from omniserve.runtime.facts import StageFacts
from omniserve.voices import BlendPart, language_tag, parse_blend


def test_blends_are_normalized_weights():
    assert parse_blend("af_bella+af_sky") == [BlendPart("af_bella", 0.5), BlendPart("af_sky", 0.5)]
    assert parse_blend(" af_bella(2) + af_sky(1) ") == [BlendPart("af_bella", 2 / 3), BlendPart("af_sky", 1 / 3)]
    assert parse_blend("a(0.5)+b") == [BlendPart("a", 0.5 / 1.5), BlendPart("b", 1 / 1.5)]
    for bad in ("a+", "a(2", "a(-1)+b", "a(x)+b", "+".join("v" * 9)):
        with pytest.raises(ValueError):
            parse_blend(bad)
    with pytest.raises(ValueError, match="all be 0"):
        parse_blend("a(0)+b(0)")


def test_languages_by_code_tag_or_name():
    assert [language_tag(x) for x in ("en", "EN_us", "en-GB", "English", "fr", "pt", "zh-CN", "Japanese")] == [
        "en-US", "en-US", "en-GB", "en-US", "fr-FR", "pt-BR", "zh", "ja"]
    assert language_tag("klingon") is None


def model(id: str, voices: list[str], stage: str, **facts) -> ServedModel:
    return ServedModel(id=id, created=0, owned_by="me", max_model_len=None, root=id, kind="tts", stage=stage,
                       facts=StageFacts(voices=voices, **facts))


PIPER = model("piper", ["joe"], "talker")
KOKORO = model("kokoro", ["af_heart", "af_nova", "am_echo"], "talker_kokoro", blends=True,
               openai_voices={"nova": "af_nova", "echo": "am_echo"})


class FakeClient:
    served_models = [PIPER, KOKORO]


def test_a_model_resolves_its_names_openai_names_and_blends():
    assert resolve_voice(KOKORO, None) == "af_heart"
    assert resolve_voice(KOKORO, "AF_Nova") == "af_nova"
    assert resolve_voice(KOKORO, "nova") == "af_nova" and resolve_voice(KOKORO, "alloy") == "af_heart"
    assert resolve_voice(PIPER, "nova") == "joe"
    assert resolve_voice(KOKORO, "af_nova(3)+echo(1)") == "af_nova(0.75)+am_echo(0.25)"
    with pytest.raises(InvalidRequest, match="blend"):
        resolve_voice(KOKORO, "af_nobody")
    with pytest.raises(InvalidRequest, match="unknown voice"):
        resolve_voice(PIPER, "joe+joe")  # Piper does not blend


def test_with_no_model_named_the_first_that_has_the_voice_speaks():
    voices = Speakers(FakeClient())
    assert voices.pick(None) is PIPER and voices.pick("nova") is PIPER
    assert voices.pick("am_echo") is KOKORO and voices.pick("am_echo+af_nova") is KOKORO
    with pytest.raises(InvalidRequest) as err:
        voices.pick("nobody", "audio.voice")
    assert err.value.param == "audio.voice" and "piper:" in err.value.message and "kokoro:" in err.value.message


def sdist(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"kokoro-0.9.4/kokoro.js/voices/{name}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_voice_files_are_checked_at_install(tmp_path):
    path = tmp_path / "kokoro-0.9.4.tar.gz"
    path.write_bytes(sdist({"af_short": b"\0" * 100}))
    with pytest.raises(ConfigError, match="100 bytes"):
        read_sdist_voices(path)
    voices = {f"v{i:02d}": np.full(VOICE_BYTES // 4, i, np.float32).tobytes() for i in range(54)}
    path.write_bytes(sdist(voices))  # the right count and sizes, the wrong bytes
    with pytest.raises(ConfigError, match="digest"):
        read_sdist_voices(path)
