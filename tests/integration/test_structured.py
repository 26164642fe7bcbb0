"""Structured output on the default server (SmolLM2-135M): `response_format` json_object and
json_schema (also through `client.beta.chat.completions.parse` with a pydantic model), and
SGLang's `regex` and `ebnf`, in chat and completions. llama.cpp's grammar sampler masks the
tokens, so even this tiny model's answers parse and validate, whatever the seed."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from pydantic import BaseModel, Field

MODEL = "smollm2-135m"
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pets"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                         "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
                         "mood": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^(happy|sad)$"}]}}}


def ask(client, content, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                          max_tokens=kw.pop("max_tokens", 120), **kw)


@pytest.mark.parametrize("seed", range(6))
def test_json_schema_validates_every_time(client, seed):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = ask(client, "Describe a person as JSON.", response_format=fmt, temperature=1.0, seed=seed)
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


class Pet(BaseModel):
    name: str = Field(max_length=16)
    species: str = Field(max_length=16)
    legs: int


def test_beta_parse_with_a_pydantic_model(client):
    r = client.beta.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Describe a pet."}],
                                           response_format=Pet, max_tokens=120, temperature=0.7, seed=1)
    pet = r.choices[0].message.parsed
    assert isinstance(pet, Pet) and len(pet.name) <= 16 and isinstance(pet.legs, int)


def test_json_object(client):
    r = ask(client, "Give the capital of France as a JSON object with keys city and country.",
            response_format={"type": "json_object"}, temperature=0)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_streamed(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    chunks = ask(client, "A person, as JSON.", response_format=fmt, stream=True, seed=3, temperature=0.8)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_regex_in_chat_and_completions(client):
    pattern = r"(yes|no), because [a-z ]{5,30}\."
    for seed in range(3):
        r = ask(client, "Is the sky blue?", extra_body={"regex": pattern}, seed=seed, temperature=1.0, max_tokens=40)
        assert re.fullmatch(pattern, r.choices[0].message.content), r.choices[0].message.content
    r = client.completions.create(model=MODEL, prompt="The year the war ended:", max_tokens=8,
                                  extra_body={"regex": r"1[89]\d\d"})
    assert re.fullmatch(r"1[89]\d\d", r.choices[0].text), r.choices[0].text


def test_ebnf(client):
    grammar = 'root ::= colour (", " colour)?\ncolour ::= "blue" | "grey" | "red"'
    r = client.completions.create(model=MODEL, prompt="Colours of the sky:", max_tokens=12, n=3, temperature=1.0,
                                  extra_body={"ebnf": grammar})
    for choice in r.choices:
        assert re.fullmatch(r"(blue|grey|red)(, (blue|grey|red))?", choice.text), choice.text


@pytest.mark.parametrize("patch, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}}}},
     "response_format.json_schema.schema", "'minimum' (at #/properties/age)"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array",
                                                                                         "uniqueItems": True}}}},
     "response_format.json_schema.schema", "'uniqueItems'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"a": True}}}}}, "response_format.json_schema.schema", "'true (use {}"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "strng"}}}},
     "response_format.json_schema.schema", "not a valid JSON Schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
     "response_format.json_schema", "with a name"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "json_schema"),
    ({"regex": "(unclosed"}, "regex", "cannot compile"),
    ({"ebnf": 'root ::= "a" | ('}, "ebnf", "does not parse"),
    ({"ebnf": 'start ::= "a"'}, "ebnf", "does not parse"),
    ({"regex": "a", "ebnf": 'root ::= "a"'}, "ebnf", "not several"),
])
def test_bad_constraints_are_400(http, patch, param, words):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **patch}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
