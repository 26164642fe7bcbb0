import pytest
from pydantic import ValidationError

from omniserve.api.protocol.chat import ChatCompletionRequest
from omniserve.api.protocol.common import loc_to_param, parse_body
from omniserve.config import ServerArgs, validate_pipeline
from omniserve.errors import ConfigError, InvalidRequest

STAGE = {"name": "thinker", "executor": "llamacpp", "args": {"model_path": "m.gguf"}}


def pipeline(**kw):
    return {"stages": [STAGE], "edges": [], **kw}


def test_valid_pipeline_and_override():
    p = validate_pipeline(pipeline())
    p2 = p.with_overrides({"stages": {"thinker": {"args": {"n_batch": 64}, "placement": {"device": "cuda:0"}}}})
    assert p2.stage("thinker").args["n_batch"] == 64
    assert p2.stage("thinker").args["model_path"] == "m.gguf"
    assert p2.stage("thinker").placement.device == "cuda:0"


@pytest.mark.parametrize(
    "data,says",
    [
        (pipeline(terminals=["thinker"]), "terminals"),  # a request's route is planned: no setting says it
        ({"stages": [STAGE, {"name": "asr", "executor": "whisper", "args": {"model_path": "w"}}],
          "edges": [{"src": "thinker", "dst": "asr"}]}, "takes no upstream input"),
        (pipeline(edges=[{"src": "thinker", "dst": "thinker"}]), "cycle"),
        (pipeline(edges=[{"src": "thinker", "dst": "x"}]), "unknown stage 'x'"),
        ({"stages": [STAGE, STAGE]}, "unique"),
        ({"stages": [{**STAGE, "args": {"model_path": "m", "threads": 0}}]},
         "stages.thinker.args.threads"),
        ({"stages": [{**STAGE, "colour": "red"}]}, "stages.thinker.colour"),
        ({"stages": [{**STAGE, "placement": {"process_group": "g", "replicas": 2}},
                     {**STAGE, "name": "other", "placement": {"process_group": "g"}}]},
         "process group 'g' share their workers, so their placement.replicas must be equal"),
        ({"stages": [{**STAGE, "placement": {"replicas": 0}}]},
         "stages.thinker.placement.replicas"),
        (pipeline(placement_strategy="wide"), "placement_strategy"),
    ],
)
def test_bad_pipeline_names_the_field(data, says):
    with pytest.raises(ConfigError) as info:
        validate_pipeline(data)
    assert says in str(info.value)


def test_placement_strategy_and_replicas_come_from_the_yaml():
    p = validate_pipeline(pipeline()).with_overrides({"placement_strategy": "spread",
                                                      "stages": {"thinker": {"placement": {"replicas": 3}}}})
    assert p.placement_strategy == "spread" and p.stage("thinker").placement.replicas == 3


def test_per_stage_mem_fraction_overrides_global():
    args = ServerArgs(mem_fraction_static=0.5, thinker_mem_fraction_static=0.7)
    assert args.stage_mem_fraction("thinker") == 0.7
    assert args.stage_mem_fraction("talker") == 0.5


def test_env_is_read_and_flags_win(monkeypatch):
    monkeypatch.setenv("OMNISERVE_API_KEY", "from-env")
    assert ServerArgs().api_key == "from-env"
    assert ServerArgs(api_key="from-flag").api_key == "from-flag"


def test_loc_to_param():
    assert loc_to_param(("messages", 0, "role")) == "messages[0].role"
    assert loc_to_param(("stop", "list[str]", 0)) == "stop[0]"


def test_extra_body_nested_is_merged():
    body = parse_body(b'{"messages":[{"role":"user","content":"x"}],"extra_body":{"top_k":5}}',
                      ChatCompletionRequest)
    assert body.top_k == 5


def test_parse_body_errors_name_the_parameter():
    with pytest.raises(InvalidRequest) as info:
        parse_body(b'{"messages":[{"role":"user","content":"x"}],"temperature":-1}', ChatCompletionRequest)
    assert info.value.param == "temperature"


def test_cycle_detection():
    from omniserve.config import EdgeConfig, _has_cycle

    edges = [EdgeConfig(src="a", dst="b"), EdgeConfig(src="b", dst="c")]
    assert not _has_cycle(["a", "b", "c"], edges)
    assert _has_cycle(["a", "b", "c"], [*edges, EdgeConfig(src="c", dst="a")])


@pytest.mark.parametrize(("text", "models"), [
    ("none", ["none"]), ("kokoro-82m piper-joe-medium", ["kokoro-82m", "piper-joe-medium"]),
    ("a.onnx,b", ["a.onnx", "b"]), ('["x", "y"]', ["x", "y"]),
])
def test_voice_models_from_the_environment(monkeypatch, text, models):
    monkeypatch.setenv("OMNISERVE_TTS_MODEL", text)
    assert ServerArgs().tts_model == models
    assert ServerArgs(tts_model=["piper-joe-medium"]).tts_model == ["piper-joe-medium"]  # a flag wins


def test_ice_servers_are_stun_urls():
    stun = ["stun:stun.example:3478"]
    assert ServerArgs(realtime_ice_servers=stun).realtime_ice_servers == stun
    for bad in ("turn:relay.example", "stun.example:3478", "stun:host/path"):
        with pytest.raises(ValidationError, match="is not a STUN server"):
            ServerArgs(realtime_ice_servers=[bad])
