"""What a stage tells when it loads (omniserve.runtime.facts): one typed record that crosses the worker pipe,
shows in /get_model_info only what was told, and is what the presets and the spec name facts by."""

from __future__ import annotations

import json
import pickle

import pytest
from pydantic import ValidationError

from omniserve.api.openapi import OPERATIONS
from omniserve.api.protocol.models import ModelInfo
from omniserve.config import ServedAs
from omniserve.runtime.facts import StageFacts, VoiceDetail


def test_facts_cross_a_pipe_and_show_only_what_was_told():
    told = StageFacts(model_path="m.gguf", name=None, voices=["a"], voice_details={"a": VoiceDetail(gender="male")})
    with_pid = pickle.loads(pickle.dumps(told)).model_copy(update={"pid": 42})
    assert with_pid.voice_details["a"].gender == "male" and with_pid.pid == 42
    # an unset fact stays out; one set to None (a GGUF without general.name) shows as null, as before
    assert json.loads(with_pid.model_dump_json()) == {
        "model_path": "m.gguf", "name": None, "voices": ["a"], "voice_details": {"a": {"language": None,
                                                                                     "gender": "male"}}, "pid": 42}
    assert StageFacts().model_dump() == {}


def test_facts_are_typed_and_closed():
    with pytest.raises(ValidationError):
        StageFacts(sample_rate="fast")
    with pytest.raises(ValidationError):
        StageFacts(sampel_rate=24000)  # a misspelt fact is an error, not a fact nobody reads
    with pytest.raises(ValidationError):
        StageFacts().sample_rate = 1  # frozen: a handle's facts are replaced, not changed


def test_a_served_model_carries_facts_another_stage_told():
    code2wav = StageFacts(sample_rate=24000, voices=["Chelsie", "Ethan"])
    talker = StageFacts(voices=["Ethan", "Chelsie"], device="cpu")
    served = code2wav.with_facts(talker, ["voices"])
    assert served.voices == ["Ethan", "Chelsie"] and served.sample_rate == 24000 and served.device is None
    assert code2wav.with_facts(StageFacts(), ["voices"]).voices == ["Chelsie", "Ethan"]  # a stage not up tells none


def test_a_preset_names_only_facts_that_exist():
    assert ServedAs(ids=["x"], kind="tts", facts_from={"talker": ["voices"]}).facts_from == {"talker": ["voices"]}
    with pytest.raises(ValidationError, match="no stage tells voice"):
        ServedAs(ids=["x"], kind="tts", facts_from={"talker": ["voice"]})


def test_every_fact_the_spec_needs_is_a_stage_fact():
    needs = {op.needs for op in OPERATIONS if op.needs}
    assert needs and needs <= set(StageFacts.model_fields)


def test_model_info_documents_the_facts():
    schema = ModelInfo.model_json_schema(mode="serialization")
    facts = schema["$defs"]["StageFacts"]
    assert {"sample_rate", "voices", "pid", "node"} <= set(facts["properties"]) and not facts.get("required")
