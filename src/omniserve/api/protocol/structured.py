"""Structured output: `response_format` (`json_object`, `json_schema`) and SGLang's `regex` and
`ebnf` become one GBNF grammar. llama.cpp's grammar sampler applies it while sampling, so only
tokens the grammar allows can be drawn, and a finished answer always parses.

A JSON Schema goes through llama.cpp's own converter (`json_schema_to_gbnf`). That converter
skips keywords it does not know, which would let an answer break the schema, so a schema is
first checked for them: an unsupported keyword is a 400 naming it and where it stands. A regex
becomes a finite automaton (`interegular`) and each state a grammar rule. A GBNF grammar given
as `ebnf` is checked for what crashes llama.cpp rather than failing cleanly there: nesting past
a bound, and character classes that match nothing.

Building a grammar can take long or recurse deep on a hostile input, so it runs out of the
server process (`api/grammar.py`), from a `GrammarSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omniserve.errors import InvalidRequest

MAX_EBNF_CHARS = 65536
MAX_EBNF_NESTING = 64  # llama.cpp's parser recurses per group: thousands overflow its stack
MAX_REGEX_STATES = 4096  # rules in a regex's grammar (one per automaton state)
MAX_CODEPOINT = 0x10FFFF


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output grammar is made from: `response_format`, `regex` or `ebnf`, or a
    forced call to one of `forced` among `tools` (each tool's parameter schema must compile even
    when the call is not forced)."""

    response_format: dict[str, Any] | None = None
    regex: str | None = None
    ebnf: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    forced: tuple[str, ...] | None = None
    parallel: bool = False

    @property
    def param(self) -> str:
        """The request parameter the grammar comes from, for errors."""
        if self.forced is not None or (self.tools and not self.given):
            return "tools"
        return self.given[0] if self.given else "response_format"

    @property
    def given(self) -> list[str]:
        rf = self.response_format
        return [name for name, value in (("response_format", rf and rf.get("type", "text") != "text"),
                                         ("regex", self.regex is not None), ("ebnf", self.ebnf is not None))
                if value]

# What llama.cpp's converter turns into grammar rules, and keywords that only annotate.
ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
            "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern",
            "minLength", "maxLength", "format"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly"}
SCHEMA_VALUED = {"properties", "$defs", "definitions"}  # maps of name -> subschema
SCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}


def check_choice(spec: GrammarSpec) -> None:
    """One source of grammar at most (cheap: before any work is done)."""
    given = spec.given
    if len(given) > 1:
        raise InvalidRequest(f"{given[1]}: give one of response_format, regex and ebnf, not several",
                             param=given[1])
    if spec.forced and given:
        raise InvalidRequest("tool_choice: a forced tool call cannot be combined with response_format, "
                             "regex or ebnf", param="tool_choice")


def grammar_for(response_format: dict[str, Any] | None, regex: str | None, ebnf: str | None) -> str | None:
    """The GBNF grammar a request's output must follow, or None for free text."""
    check_choice(GrammarSpec(response_format, regex, ebnf))
    if regex is not None:
        return regex_grammar(regex)
    if ebnf is not None:
        return checked_ebnf(ebnf)
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
    if len(live) > MAX_REGEX_STATES:
        raise InvalidRequest(f"regex: its automaton has {len(live)} states; the limit is {MAX_REGEX_STATES} "
                             "(bounded repeats of character classes multiply states: simplify it)", param="regex")
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


# ---- GBNF given as `ebnf` -------------------------------------------------------------------

def checked_ebnf(grammar: str) -> str:
    """`grammar`, unless it holds what llama.cpp's parser or sampler would crash on (a 400)."""
    if not grammar.strip():
        raise InvalidRequest("ebnf: the grammar is empty", param="ebnf")
    if len(grammar) > MAX_EBNF_CHARS:
        raise InvalidRequest(f"ebnf: the grammar is {len(grammar)} characters; the limit is {MAX_EBNF_CHARS}",
                             param="ebnf")
    problem = _GbnfScan(grammar).problem()
    if problem:
        raise InvalidRequest(f"ebnf: {problem}", param="ebnf")
    return grammar


class _GbnfScan:
    """A pass over GBNF text as llama.cpp's parser reads it (literals, character classes,
    comments, groups), finding too deep nesting and characters no token can spell: character
    classes that match nothing, and NUL (llama.cpp matches token text as C strings, which end
    there). The sampler aborts the process when a grammar leaves no token to choose."""

    _ESCAPES = {"t": 9, "n": 10, "r": 13, "\\": 92, '"': 34, "[": 91, "]": 93}

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def problem(self) -> str | None:
        depth, text = 0, self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif c == '"':
                start = self.pos
                self.pos += 1
                while self.pos < len(text) and text[self.pos] != '"':
                    if self._char() == 0:
                        return f"the literal at offset {start} holds a NUL character, which no token can spell"
                self.pos += 1
            elif c == "[":
                start = self.pos
                if not self._class_matches():
                    return f"the character class {text[start:self.pos]} (at offset {start}) matches no character"
            elif c == "(":
                depth += 1
                if depth > MAX_EBNF_NESTING:
                    return f"groups nest deeper than {MAX_EBNF_NESTING} levels (at offset {self.pos})"
                self.pos += 1
            else:
                depth -= c == ")"
                self.pos += 1
        return None

    def _char(self) -> int:
        """One character of a literal or class, escapes decoded."""
        text = self.text
        if text[self.pos] != "\\" or self.pos + 1 >= len(text):
            self.pos += 1
            return ord(text[self.pos - 1])
        kind = text[self.pos + 1]
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        if width:
            digits = text[self.pos + 2:self.pos + 2 + width]
            self.pos += 2 + width
            try:
                return int(digits, 16)
            except ValueError:
                return -1  # llama.cpp refuses it when parsing
        self.pos += 2
        return self._ESCAPES.get(kind, -1)

    def _class_matches(self) -> bool:
        text = self.text
        self.pos += 1
        negated = self.pos < len(text) and text[self.pos] == "^"
        self.pos += negated
        ranges = []
        while self.pos < len(text) and text[self.pos] != "]":
            low = self._char()
            high = low
            if self.pos + 1 < len(text) and text[self.pos] == "-" and text[self.pos + 1] != "]":
                self.pos += 1
                high = self._char()
            low = max(low, 1) if low >= 0 else low  # NUL is no character a token can spell
            if 0 < low <= high:
                ranges.append((low, min(high, MAX_CODEPOINT)))
        self.pos += 1
        if not negated:
            return bool(ranges)
        covered = 1  # does the union of the ranges leave any code point (past NUL) out?
        for low, high in sorted(ranges):
            if low > covered:
                return True
            covered = max(covered, high + 1)
        return covered <= MAX_CODEPOINT
