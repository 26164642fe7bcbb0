"""Structured output: `response_format` (`json_object`, `json_schema`) and SGLang's `regex` and
`ebnf` become one GBNF grammar. llama.cpp's grammar sampler applies it while sampling, so only
tokens the grammar allows can be drawn, and a finished answer always parses.

A JSON Schema goes through llama.cpp's own converter (`json_schema_to_gbnf`). That converter
skips keywords it does not know, which would let an answer break the schema, so a schema is
first checked for them: an unsupported keyword is a 400 naming it and where it stands. A regex
becomes a finite automaton (`interegular`) and each state a grammar rule.
"""

from __future__ import annotations

from typing import Any

from omniserve.errors import InvalidRequest

# What llama.cpp's converter turns into grammar rules, and keywords that only annotate.
ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
            "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern",
            "minLength", "maxLength", "format"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly"}
SCHEMA_VALUED = {"properties", "$defs", "definitions"}  # maps of name -> subschema
SCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}


def grammar_for(response_format: dict[str, Any] | None, regex: str | None, ebnf: str | None) -> str | None:
    """The GBNF grammar a request's output must follow, or None for free text."""
    given = [name for name, value in (("response_format", response_format and response_format.get("type",
                                                                                                "text") != "text"),
                                      ("regex", regex), ("ebnf", ebnf)) if value]
    if len(given) > 1:
        raise InvalidRequest(f"{given[1]}: give one of response_format, regex and ebnf, not several",
                             param=given[1])
    if regex is not None:
        return regex_grammar(regex)
    if ebnf is not None:
        if not ebnf.strip():
            raise InvalidRequest("ebnf: the grammar is empty", param="ebnf")
        return ebnf
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        from llama_cpp.llama_grammar import JSON_GBNF

        return JSON_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise InvalidRequest("response_format.json_schema: give {name, schema, strict}, with a name",
                                 param="response_format.json_schema")
        schema = spec.get("schema", {})
        return json_schema_grammar(schema, "response_format.json_schema.schema")
    raise InvalidRequest(f"response_format.type: must be text, json_object or json_schema; got {kind!r}",
                         param="response_format.type")


def json_schema_grammar(schema: Any, where: str) -> str:
    """GBNF for documents valid under `schema`, or a 400 that names what cannot be enforced."""
    return schema_rules(checked_schema(schema, where), "", where)


def checked_schema(schema: Any, where: str) -> dict[str, Any]:
    """`schema`, if it is a valid JSON Schema whose every keyword the grammar can enforce; else a 400."""
    from jsonschema import Draft202012Validator, SchemaError

    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where}: a JSON Schema is an object", param=where)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = "/".join(map(str, exc.path))
        raise InvalidRequest(f"{where}: not a valid JSON Schema{f' at #/{path}' if path else ''}: {exc.message}",
                             param=where) from None
    problem = unsupported_keyword(schema)
    if problem:
        keyword, path = problem
        raise InvalidRequest(f"{where}: the keyword {keyword!r} (at {path}) is not supported by the grammar "
                             f"engine; supported: {', '.join(sorted(ENFORCED))}", param=where)
    return schema


def schema_rules(schema: dict[str, Any], name: str, where: str, prop_order: list[str] | None = None) -> str:
    """llama.cpp's converter: GBNF rules for `schema`, its top rule called `name` (`root` for "")."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={k: i for i, k in enumerate(prop_order or [])}, allow_fetch=False,
                                dotall=False, raw_pattern=False)
    try:
        converter.visit(converter.resolve_refs(schema, where), name)
    except (AssertionError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidRequest(f"{where}: the grammar engine cannot compile this schema: {exc}", param=where) from None
    # the converter's string characters include raw control characters, which JSON forbids
    return converter.format_grammar().replace(_LOOSE_CHAR, _JSON_CHAR)


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def unsupported_keyword(schema: Any, path: str = "#") -> tuple[str, str] | None:
    """The first keyword the converter would skip, with its JSON pointer; None when all are enforced."""
    if isinstance(schema, bool):  # the converter takes only object subschemas
        return ("true (use {} for any value)" if schema else "false", path)
    for key, value in schema.items():
        here = f"{path}/{key}"
        if key not in ENFORCED and key not in ANNOTATIONS:
            return key, path
        if key == "pattern" and ({"minLength", "maxLength"} & schema.keys()):
            return "pattern with minLength/maxLength", path
        if key in SCHEMA_VALUED:
            found = next((p for name, sub in value.items() if (p := unsupported_keyword(sub, f"{here}/{name}"))),
                         None)
        elif key in SCHEMA_LISTS:
            found = next((p for i, sub in enumerate(value) if (p := unsupported_keyword(sub, f"{here}/{i}"))), None)
        elif (key == "items" and isinstance(value, dict | bool)) or (key == "additionalProperties"
                                                                    and isinstance(value, dict)):
            found = unsupported_keyword(value, here)
        else:
            found = None
        if found:
            return found
    return None


def regex_grammar(pattern: str) -> str:
    """GBNF for strings the whole of which match `pattern`: one rule per state of its automaton."""
    import interegular

    try:
        fsm = interegular.parse_pattern(pattern).to_fsm()
    except Exception as exc:  # interegular raises its own parse errors and NotImplementedError
        raise InvalidRequest(f"regex: cannot compile {pattern!r}: {type(exc).__name__}: {exc}",
                             param="regex") from None
    classes = fsm.alphabet.by_transition
    explicit = {c for chars in classes.values() for c in chars if isinstance(c, str)}
    live = set(fsm.finals)  # states from which a match can still end
    while True:
        more = {s for s in fsm.states if s not in live and set(fsm.map.get(s, {}).values()) & live}
        if not more:
            break
        live |= more
    if fsm.initial not in live:
        raise InvalidRequest(f"regex: {pattern!r} matches nothing", param="regex")
    rules = []
    for state in sorted(live):
        alternatives = [f"{_char_class(classes[t], explicit)} s{target}"
                        for t, target in sorted(fsm.map.get(state, {}).items()) if target in live]
        if state in fsm.finals:
            alternatives.append('""')
        rules.append(f"s{state} ::= " + " | ".join(alternatives))
    return f"root ::= s{fsm.initial}\n" + "\n".join(rules)


def _char_class(chars: list, explicit: set[str]) -> str:
    """A GBNF character class for one transition: its characters, or, where it stands for every
    other character, a negated class of all that the pattern names."""
    if any(not isinstance(c, str) for c in chars):  # interegular's `anything_else`
        others = sorted(explicit - set(chars))
        return "[^" + "".join(map(_escape, others)) + "]" if others else "[\\x00-\\U0010FFFF]"
    return "[" + "".join(map(_escape, sorted(chars))) + "]"


def _escape(char: str) -> str:
    return char if char.isalnum() and char.isascii() else f"\\U{ord(char):08X}"
