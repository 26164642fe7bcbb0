"""The runtime plans each request's route from the graph, its media and the outputs it asks for."""

from __future__ import annotations

import numpy as np
import pytest

from omniserve.config import validate_pipeline
from omniserve.errors import ConfigError, InvalidRequest
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.routing import media_read, path_between, plan_route, stage_reads
from omniserve.runtime.types import OmniRequest

AUDIO = np.zeros(16000, np.float32)
IMAGE = np.zeros((8, 8, 3), np.uint8)


def cascade(asr: bool = True, vision: bool = True, talker: bool = True):
    """The GGUF preset: asr, vision -> thinker ⇢ talker."""
    stages = [{"name": "thinker", "executor": "llamacpp", "args": {"model_path": "m.gguf"}}]
    edges = []
    if asr:
        stages.append({"name": "asr", "executor": "whisper", "args": {"model_path": "w"}})
        edges.append({"src": "asr", "dst": "thinker"})
    if vision:
        stages.append({"name": "vision", "executor": "describer", "args": {"classifier_path": "c"}})
        edges.append({"src": "vision", "dst": "thinker"})
    if talker:
        stages.append({"name": "talker", "executor": "piper", "args": {"model_path": "p"}})
        edges.append({"src": "thinker", "dst": "talker", "streaming": True})
    return validate_pipeline({"stages": stages, "edges": edges})


def chain(stages: dict[str, str]):
    """Stages (name -> executor) in a line, each feeding the next."""
    names = list(stages)
    return validate_pipeline({
        "stages": [{"name": n, "executor": e, "args": {"model_path": "m"}} for n, e in stages.items()],
        "edges": [{"src": a, "dst": b} for a, b in zip(names, names[1:], strict=False)]})


def omni():
    """A Qwen-Omni checkpoint: thinker -> talker -> code2wav; the thinker hears and sees itself."""
    return chain({"thinker": "qwen_omni_thinker", "talker": "qwen_omni_talker", "code2wav": "qwen_omni_code2wav"})


def diffusion():
    return chain({"text_encoder": "diffusers_text_encoder", "denoiser": "diffusers_denoiser",
                  "vae": "diffusers_vae"})


def route(pipeline, **request):
    planned = plan_route(pipeline, OmniRequest("r", **request))
    return set(planned.stages), set(planned.emit)


def test_a_chat_visits_the_stages_its_media_and_outputs_need():
    p = cascade()
    assert route(p, entry="thinker", prompt="hi") == ({"thinker"}, {"thinker"})
    assert route(p, entry="thinker", audios=[AUDIO]) == ({"asr", "thinker"}, {"thinker"})
    assert route(p, entry="thinker", images=[IMAGE], audios=[AUDIO]) == ({"asr", "vision", "thinker"}, {"thinker"})
    assert route(p, entry="thinker", output_modalities=["text", "audio"]) == ({"thinker", "talker"},
                                                                              {"thinker", "talker"})


def test_a_request_names_which_of_two_voice_models_speaks():
    p = cascade()
    p = validate_pipeline({
        "stages": [s.model_dump() for s in p.stages] + [
            {"name": "talker_kokoro", "executor": "kokoro", "args": {"model_path": "k", "voices_path": "v"}}],
        "edges": [e.model_dump() for e in p.edges] + [{"src": "thinker", "dst": "talker_kokoro", "streaming": True}]})
    spoken = {"entry": "thinker", "output_modalities": ["text", "audio"]}
    assert route(p, **spoken) == ({"thinker", "talker"}, {"thinker", "talker"})  # the nearest: the first
    assert route(p, **spoken, makers={"audio": "talker_kokoro"}) == ({"thinker", "talker_kokoro"},
                                                                     {"thinker", "talker_kokoro"})
    with pytest.raises(InvalidRequest, match="makes audio"):
        route(p, **spoken, makers={"audio": "vision"})


def test_single_stage_requests_stay_on_their_stage():
    p = cascade()
    assert route(p, entry="asr", audios=[AUDIO]) == ({"asr"}, {"asr"})  # a transcription
    assert route(p, entry="talker", output_modalities=["audio"]) == ({"talker"}, {"talker"})  # speech
    assert route(p, entry="thinker", output_modalities=["embedding"]) == ({"thinker"}, {"thinker"})


def test_an_omni_checkpoint_reads_media_itself_and_speaks_through_all_its_stages():
    p = omni()
    assert route(p, entry="thinker", audios=[AUDIO], images=[IMAGE]) == ({"thinker"}, {"thinker"})
    assert route(p, entry="thinker", output_modalities=["text", "audio"]) == (
        {"thinker", "talker", "code2wav"}, {"thinker", "code2wav"})
    assert route(p, entry="thinker", output_modalities=["audio"]) == (  # reading a text aloud
        {"thinker", "talker", "code2wav"}, {"code2wav"})


def test_diffusion_runs_its_three_stages_and_a_job_hears_from_each():
    p = diffusion()
    assert route(p, entry="text_encoder", output_modalities=["image"], images=[IMAGE]) == (
        {"text_encoder", "denoiser", "vae"}, {"vae"})  # the denoiser takes the reference image itself
    stages, emit = route(p, entry="text_encoder", output_modalities=["video"], progress=True)
    assert stages == emit == {"text_encoder", "denoiser", "vae"}


def test_what_no_stage_can_do_is_a_400():
    with pytest.raises(InvalidRequest, match="no stage that reads audio"):
        route(cascade(asr=False), entry="thinker", audios=[AUDIO])
    with pytest.raises(InvalidRequest, match="no stage that makes audio") as caught:
        route(cascade(talker=False), entry="thinker", output_modalities=["text", "audio"])
    assert caught.value.param == "modalities"
    with pytest.raises(InvalidRequest, match="no stage 'painter'"):
        route(cascade(), entry="painter")


def projector(asr: bool):
    """A GGUF with a --mmproj projector as its vision stage (and speech to text, when the projector does not hear)."""
    stages = [{"name": "thinker", "executor": "llamacpp", "args": {"model_path": "m.gguf"}},
              {"name": "vision", "executor": "mtmd", "args": {"model_path": "m.gguf", "mmproj_path": "p.gguf"}}]
    edges = [{"src": "vision", "dst": "thinker"}]
    if asr:
        stages.append({"name": "asr", "executor": "whisper", "args": {"model_path": "w"}})
        edges.insert(0, {"src": "asr", "dst": "thinker"})
    return validate_pipeline({"stages": stages, "edges": edges})


def test_what_a_stage_reads_is_what_its_model_told_it_reads():
    hears = projector(asr=False)
    read = stage_reads(hears, lambda stage: StageFacts(media=["audio"]) if stage == "vision" else StageFacts())
    assert read == {"thinker": frozenset(), "vision": {"audio"}}
    assert media_read(hears, ["thinker"], read) == {"audio"}
    assert media_read(hears, ["thinker"], stage_reads(hears)) == {"audio", "image"}  # before the stages load
    assert route(hears, entry="thinker", audios=[AUDIO]) == ({"vision", "thinker"}, {"thinker"})
    with pytest.raises(InvalidRequest, match="no stage that reads image"):
        plan_route(hears, OmniRequest("r", entry="thinker", images=[IMAGE]), read)
    sees = projector(asr=True)
    read = stage_reads(sees, lambda stage: StageFacts(media=["image"]) if stage == "vision" else StageFacts())
    assert media_read(sees, ["thinker"], read) == {"audio", "image"}
    planned = plan_route(sees, OmniRequest("r", entry="thinker", audios=[AUDIO], images=[IMAGE]), read)
    assert planned.stages == {"asr", "vision", "thinker"}
    assert media_read(omni(), ["thinker", "talker", "code2wav"], stage_reads(omni())) == {"audio", "image"}
    assert media_read(cascade(asr=False, vision=False), ["thinker", "talker"],
                      stage_reads(cascade(asr=False, vision=False))) == set()


def test_stage_sampling_is_checked_against_the_stage_and_goes_under_params():
    p = cascade()
    with pytest.raises(InvalidRequest, match="unknown stage 'painter'"):
        route(p, entry="thinker", stage_sampling={"painter": {"x": 1}})
    with pytest.raises(InvalidRequest) as caught:
        route(p, entry="thinker", stage_sampling={"talker": {"speed": 9}})
    assert caught.value.param == "stage_sampling.talker.speed"
    request = OmniRequest("r", entry="thinker", output_modalities=["text", "audio"],
                          stage_sampling={"talker": {"speed": 1.5, "voice": "mine"}},
                          params={"talker": {"voice": "resolved"}})
    planned = plan_route(p, request)
    assert planned.params["talker"] == {"speed": 1.5, "voice": "resolved"}  # what the API derived wins
    assert request.params == {"talker": {"voice": "resolved"}} and request.stage_sampling  # the request is as it was


def test_a_served_model_visits_the_stages_from_its_entry_to_its_stage():
    assert path_between(omni(), "thinker", "code2wav") == ["thinker", "talker", "code2wav"]
    assert path_between(omni(), "talker", "talker") == ["talker"]
    with pytest.raises(ValueError, match="not downstream"):
        path_between(omni(), "code2wav", "thinker")


def test_a_served_model_must_enter_upstream_of_its_stage():
    stages = [{"name": n, "executor": e, "args": {"model_path": "m"}} for n, e in
              [("thinker", "qwen_omni_thinker"), ("talker", "qwen_omni_talker"), ("code2wav", "qwen_omni_code2wav")]]
    edges = [{"src": "thinker", "dst": "talker"}, {"src": "talker", "dst": "code2wav"}]
    stages[2]["serves"] = [{"ids": ["voice"], "kind": "tts", "entry": "thinker"}]
    assert validate_pipeline({"stages": stages, "edges": edges}).stage("code2wav").serves[0].entry == "thinker"
    stages[0]["serves"] = [{"ids": ["chat"], "kind": "chat", "entry": "code2wav"}]
    with pytest.raises(ConfigError, match="not downstream"):
        validate_pipeline({"stages": stages, "edges": edges})
    stages[0]["serves"] = [{"ids": ["chat"], "kind": "chat", "entry": "painter"}]
    with pytest.raises(ConfigError, match="entry naming unknown stage 'painter'"):
        validate_pipeline({"stages": stages, "edges": edges})
    stages[0]["serves"] = [{"ids": ["chat"], "kind": "chat", "facts_from": {"painter": ["voices"]}}]
    with pytest.raises(ConfigError, match="facts_from naming unknown stage 'painter'"):
        validate_pipeline({"stages": stages, "edges": edges})
    stages[0]["serves"] = [{"ids": ["chat"], "kind": "chat", "lora_stage": "painter"}]
    with pytest.raises(ConfigError, match="lora_stage naming unknown stage 'painter'"):
        validate_pipeline({"stages": stages, "edges": edges})
