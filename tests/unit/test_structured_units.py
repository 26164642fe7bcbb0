"""Pure logic of structured output: which schema keywords can be enforced, and regex -> GBNF."""

from __future__ import annotations

import pytest

from omniserve.api.protocol.structured import grammar_for, regex_grammar, unsupported_keyword
from omniserve.errors import InvalidRequest


@pytest.mark.parametrize("schema, found", [
    ({"type": "object", "properties": {"a": {"type": "string", "title": "A"}}, "required": ["a"]}, None),
    ({"$defs": {"x": {"type": "integer", "exclusiveMaximum": 3}}, "$ref": "#/$defs/x"},
     ("exclusiveMaximum", "#/$defs/x")),
    ({"type": "array", "items": {"anyOf": [{"type": "null"}, {"not": {"type": "string"}}]}},
     ("not", "#/items/anyOf/1")),
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, ("pattern with minLength/maxLength", "#")),
    ({"type": "object", "additionalProperties": {"type": "number", "multipleOf": 2}},
     ("multipleOf", "#/additionalProperties")),
    ({"type": "object", "properties": {"x": False}}, ("false", "#/properties/x")),
    ({"type": "array", "items": True}, ("true (use {} for any value)", "#/items")),
])
def test_unsupported_keyword(schema, found):
    assert unsupported_keyword(schema) == found


def test_regex_becomes_one_rule_per_live_state():
    grammar = regex_grammar(r"(ab|c)d?")
    assert grammar.startswith("root ::= s0\n")
    assert '""' in grammar and "[a]" in grammar and "[c]" in grammar
    assert "\\U0000002D" in regex_grammar(r"a-b")  # punctuation is escaped as a code point


def test_regex_that_matches_nothing_is_refused():
    with pytest.raises(InvalidRequest, match="matches nothing"):
        regex_grammar(r"a[^\s\S]")


def test_text_and_nothing_are_free():
    assert grammar_for(None, None, None) is None
    assert grammar_for({"type": "text"}, None, None) is None
    assert "root" in grammar_for({"type": "json_object"}, None, None)
