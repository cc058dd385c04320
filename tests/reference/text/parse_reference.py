#!/usr/bin/env python3
"""Goldens for Sirocco's output parser (engine/text/output_parser.*), from mistral-common.

The reference parser is mistral-common's own: its experimental server turns
generated ids into an AssistantMessage in `detokenize_to_assistant_message`
(mistral_common/experimental/app/routers.py) with the helpers of
mistral_common/experimental/{tools,think}.py. `reference_parse` calls that
route directly (fastapi is part of the project's environment, see
tools/setup.sh --venv) and turns the HTTP 400 it raises into an error record.

Tokenizers: the shipped v3 file tekken_240718.json, and v7, v11, v13, v15 files
derived from tekken_240911.json with engine/text/data/tekken_versions.json by
strings_reference.build_derived, the Python twin of engine/text/tekken_file.cc. The golden
records for each how the C++ test gets the same file.

Cases, for every tokenizer:
  * rendered: an AssistantMessage (reasoning + answer, answer only, one and
    several tool calls, unicode and emoji in every field, nested JSON
    arguments, with and without the final EOS) rendered by the version's
    instruct tokenizer (`encode_assistant_message`). Besides the reference
    parse, the script requires that parse to give back the message itself
    (the parser is the inverse of the rendering), after the rendering's own
    lossy steps (trailing spaces of string content, tool-call ids the format
    does not carry).
  * raw: hand-written id sequences the model could emit but the renderer never
    makes: unterminated or nested [THINK], [/THINK] alone, invalid JSON
    arguments, [ARGS] without a name, repeated [ARGS]/[CALL_ID], split and
    invalid UTF-8, text after EOS...
  * fuzz: seeded random sequences of text fragments, byte tokens and the
    version's control tokens (`--fuzz N` per tokenizer, 40 committed);
  * mutated: rendered outputs with a few ids deleted, duplicated or replaced
    by control tokens, EOS or byte tokens (N/2 per tokenizer).

Each case stores the ids and the reference's result: either
  {"content": [{"type": "text", "text": ...} | {"type": "thinking", "thinking": ..., "closed": bool}],
   "tool_calls": [{"id": ..., "name": ..., "arguments": ...}], "prefix": bool}
(content None and "" text normalised to [] and [text ""] as the reference
builds them; a plain string content is one text chunk) or
  {"error": {"kind": KIND, "message": MESSAGE or null}}
with KIND one of nested_think, unmatched_end_think, malformed_tool_call,
invalid_tool_arguments (message: the reference's exception text, null for
pydantic validation errors whose text is pydantic's).

Usage:
  .venv/bin/python tests/reference/text/parse_reference.py generate  # rewrites parse_golden.json
  .venv/bin/python tests/reference/text/parse_reference.py check     # live mistral-common vs committed goldens
  .venv/bin/python tests/reference/text/parse_reference.py generate --fuzz 6000 --out /tmp/x/parse_golden.json
      # a stress set; build text_test with SIROCCO_TEXT_REFERENCE_DIR=/tmp/x to replay it
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import mistral_common
from mistral_common.experimental.think import _split_content_and_think_chunks
from mistral_common.experimental.tools import (
    InvalidArgsToolCallError,
    InvalidToolCallError,
    _decode_tool_calls,
    _split_content_and_tool_calls,
)
from mistral_common.protocol.instruct.chunk import TextChunk, ThinkChunk
from mistral_common.protocol.instruct.messages import AssistantMessage
from mistral_common.protocol.instruct.tool_calls import FunctionCall, ToolCall
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy, TokenizerVersion
from mistral_common.tokens.tokenizers.instruct import InstructTokenizerV13
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from pydantic import ValidationError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
GOLDEN = HERE / "parse_golden.json"

# ----------------------------------------------------------------------------
# Tokenizers


SHIPPED = "tekken_240718.json"  # the v3 file (tekken_240911.json is the derived files' base)
VERSIONS_SPEC = ROOT / "engine" / "text" / "data" / "tekken_versions.json"


def _shipped_dir() -> Path:
    setup = ROOT / "third_party" / "tekken"
    return setup if (setup / SHIPPED).exists() else Path(mistral_common.__file__).parent / "data"


def _derived_file(version: str, out_dir: Path) -> Path:
    """The derived tekken file, built by the tokenizer reference's own builder
    (strings_reference.build_derived: what engine/text/tekken_file.cc writes)."""
    sys.path.insert(0, str(HERE))
    import strings_reference

    spec = json.loads(VERSIONS_SPEC.read_text(encoding="utf-8"))
    data = strings_reference.build_derived(_shipped_dir() / spec["base_vocabulary"], version)
    path = out_dir / f"tekken_{version}.json"  # from_file recognises "tekken*.json" names
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load_tokenizers(tmp: Path) -> dict[str, tuple[MistralTokenizer, dict[str, Any]]]:
    """name -> (tokenizer, how the C++ test gets the same file)."""
    base = json.loads(VERSIONS_SPEC.read_text(encoding="utf-8"))["base_vocabulary"]
    out = {"v3": (MistralTokenizer.from_file(str(_shipped_dir() / SHIPPED)), {"file": SHIPPED})}
    for version in ("v7", "v11", "v13", "v15"):
        tok = MistralTokenizer.from_file(str(_derived_file(version, tmp)))
        out[version] = (tok, {"derived": version, "base": base})
    return out


# ----------------------------------------------------------------------------
# The reference parser


_FIXED_MESSAGES = {
    "Nested think chunks are not allowed.": "nested_think",
    "End think token found without a begin think token.": "unmatched_end_think",
}


def _error_record(e: Exception) -> dict[str, Any]:
    if isinstance(e, ValidationError):
        fields = {str(err["loc"][0]) for err in e.errors() if err.get("loc")}
        kind = "malformed_tool_call" if ("name" in fields or "arguments" not in fields) else "invalid_tool_arguments"
        return {"kind": kind, "message": None}
    message = str(e)
    if message in _FIXED_MESSAGES:
        kind = _FIXED_MESSAGES[message]
    elif isinstance(e, InvalidArgsToolCallError):
        kind = "invalid_tool_arguments"
    elif isinstance(e, (InvalidToolCallError, ValueError)):
        kind = "malformed_tool_call"
    else:  # pragma: no cover - the route would answer 500
        raise e
    return {"kind": kind, "message": message}


def normalize_message(msg: AssistantMessage) -> dict[str, Any]:
    content = msg.content
    chunks: list[dict[str, Any]] = []
    if isinstance(content, str):
        chunks = [{"type": "text", "text": content}]
    elif content is not None:
        for c in content:
            if isinstance(c, TextChunk):
                chunks.append({"type": "text", "text": c.text})
            else:
                assert isinstance(c, ThinkChunk), c
                chunks.append({"type": "thinking", "thinking": c.thinking, "closed": c.closed})
    calls = [
        {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments} for tc in (msg.tool_calls or [])
    ]
    return {"content": chunks, "tool_calls": calls, "prefix": msg.prefix}


def reference_parse(tok: MistralTokenizer, ids: list[int]) -> dict[str, Any]:
    """mistral-common's own route, called directly; its HTTP 400 becomes an error record."""
    import asyncio
    from types import SimpleNamespace

    from fastapi import HTTPException
    from mistral_common.experimental.app.routers import detokenize_to_assistant_message

    assert ids, "the reference route rejects an empty list"
    try:
        msg = asyncio.run(detokenize_to_assistant_message(settings=SimpleNamespace(tokenizer=tok), tokens=ids))
    except HTTPException as e:
        # The route raises the 400 while handling the parser's own exception,
        # which stays attached as the context: classify that one.
        cause = e.__context__
        if e.status_code != 400 or not isinstance(cause, (ValueError, json.JSONDecodeError)):
            raise
        return {"error": _error_record(cause)}
    return normalize_message(msg)


# ----------------------------------------------------------------------------
# Case material

TEXTS = [
    "Hello! How can I help you today?",
    "Bonjour, ça va ? Très bien, merci.",
    "Grüße aus Köln — schönes Wetter heute.",
    "你好，世界！今天天气很好。",
    "こんにちは、元気ですか？カタカナとひらがな。",
    "안녕하세요, 반갑습니다.",
    "مرحبا بالعالم، كيف حالك؟",
    "שלום עולם",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "สวัสดีครับ ยินดีที่ได้รู้จัก",
    "Привет, мир! Как дела?",
    "Emoji: 😀🎉🚀 👩‍💻 👍🏽 🇫🇷 ❤️",
    "Combining: e\u0301 a\u0308 n\u0303, ligature ﬁ, math ∑∫√π ≤ ≥",
    "```python\ndef f(x):\n    return {\"a\": [1, 2, 3]}\n```",
    "Tabs\tand\nnewlines\r\nand   long     runs of spaces",
    "Digits 1234567890 3.14159 -42 1e10 0x1F",
    "Special-looking text: [INST] [/THINK] [TOOL_CALLS] </s> <s> [ARGS]",
    "JSON-looking: {\"name\": \"x\", \"arguments\": {}} and [1, 2]",
    "MiXeD CaSe WoRdS and ALLCAPS and lowercase",
    "Quotes \"double\" 'single' and backslash \\ and slash /",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝒻𝓊𝓃 and 🧑🏾‍🚀 astronaut",
    "Zero\u200bwidth\u200djoiner and BOM\ufeffinside",
]

REASONING = [
    "The user greets me. I should answer politely.",
    "Let me compute: 17 × 23 = 391. Check: 391 / 23 = 17. ✓",
    "思考中……用户问天气，我需要调用工具。",
    "Step 1: parse the question.\nStep 2: plan.\nStep 3: answer with emoji 🤔.",
    "Hmm — the JSON should be {\"a\": 1}; [THINK] is just text here.",
    "Das ist schwierig. Überlegen wir: ä ö ü ß.",
]

NAMES = ["get_weather", "search_web", "calculator", "send_email", "lookup_user", "météo_🌦", "翻訳する", "f"]

STRING_VALUES = [
    "Paris",
    "São Paulo",
    "東京",
    "emoji 🚀🔥",
    "quote \" backslash \\ newline \n tab \t",
    "",
    "control \u0001 and del \u007f",
    "astral 𝄞 and \U0001f600",
    "RTL مرحبا",
]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"]
    if depth < 3:
        kinds += ["list", "dict", "dict"]
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(STRING_VALUES)
    if kind == "int":
        return rng.choice([0, 1, -7, 42, 2**31, -(2**40), 12345678901234567890123, rng.randrange(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -0.0, 3.14159, 1e-7, 2.5e20, 1e16, 123456.789, -1.0, rng.random()])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    keys = ["location", "unit", "query", "options", "nested", "ключ", "キー", "emoji_🔑", "a", "b"]
    return {k: random_json(rng, depth + 1) for k in rng.sample(keys, rng.randrange(0, 5))}


def random_arguments(rng: random.Random) -> dict[str, Any]:
    value = random_json(rng, 1)
    return value if isinstance(value, dict) else {"value": value}


def random_call_id(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(9))


# ----------------------------------------------------------------------------
# Rendered cases: AssistantMessage -> ids -> parse must give the message back


def _has_think(tok: MistralTokenizer) -> bool:
    it = tok.instruct_tokenizer
    return isinstance(it, InstructTokenizerV13) and it.BEGIN_THINK is not None and it.END_THINK is not None


def rendered_messages(tok: MistralTokenizer, rng: random.Random) -> list[tuple[str, AssistantMessage]]:
    version = tok.instruct_tokenizer.tokenizer.version
    think = _has_think(tok)
    content_and_calls = version >= TokenizerVersion.v7  # v3 refuses both in one message
    msgs: list[tuple[str, AssistantMessage]] = []

    def calls(n: int) -> list[ToolCall]:
        out = []
        for _ in range(n):
            call_id = random_call_id(rng) if (version >= TokenizerVersion.v13 or rng.random() < 0.7) else "null"
            out.append(
                ToolCall(id=call_id, function=FunctionCall(name=rng.choice(NAMES), arguments=random_arguments(rng)))
            )
        return out

    for i, text in enumerate(TEXTS):
        msgs.append((f"answer/{i}", AssistantMessage(content=text, prefix=i % 5 == 4)))
    for i in range(12):
        msgs.append((f"one_call/{i}", AssistantMessage(tool_calls=calls(1), prefix=i % 6 == 5)))
    for i in range(10):
        msgs.append((f"several_calls/{i}", AssistantMessage(tool_calls=calls(rng.randrange(2, 5)))))
    msgs.append(
        (
            "call/special_floats",
            AssistantMessage(
                tool_calls=[
                    ToolCall(
                        id="abcDEF123",
                        function=FunctionCall(
                            name="calc", arguments={"nan": float("nan"), "inf": float("inf"), "big": 1e300}
                        ),
                    )
                ]
            ),
        )
    )
    msgs.append(("call/empty_args", AssistantMessage(tool_calls=[ToolCall(id="abcDEF124", function=FunctionCall(name="ping", arguments={}))])))
    if content_and_calls:
        for i in range(6):
            msgs.append(
                (f"answer_and_calls/{i}", AssistantMessage(content=rng.choice(TEXTS), tool_calls=calls(rng.randrange(1, 3))))
            )
    if think:
        for i in range(10):
            chunks: list[Any] = [ThinkChunk(thinking=rng.choice(REASONING), closed=True), TextChunk(text=rng.choice(TEXTS))]
            msgs.append((f"reasoning_answer/{i}", AssistantMessage(content=chunks, prefix=i % 4 == 3)))
        for i in range(4):
            msgs.append(
                (
                    f"reasoning_calls/{i}",
                    AssistantMessage(
                        content=[ThinkChunk(thinking=rng.choice(REASONING), closed=True)], tool_calls=calls(rng.randrange(1, 3))
                    ),
                )
            )
        for i in range(3):
            msgs.append(
                (
                    f"reasoning_unclosed/{i}",
                    AssistantMessage(content=[ThinkChunk(thinking=rng.choice(REASONING), closed=False)], prefix=True),
                )
            )
        msgs.append(
            (
                "reasoning_interleaved",
                AssistantMessage(
                    content=[
                        ThinkChunk(thinking=REASONING[0], closed=True),
                        TextChunk(text=TEXTS[1]),
                        ThinkChunk(thinking=REASONING[2], closed=True),
                        TextChunk(text=TEXTS[11]),
                    ]
                ),
            )
        )
        msgs.append(("reasoning_only", AssistantMessage(content=[ThinkChunk(thinking=REASONING[3], closed=True)])))
    return msgs


def render(tok: MistralTokenizer, msg: AssistantMessage) -> list[int]:
    return list(tok.instruct_tokenizer.encode_assistant_message(msg, is_before_last_user_message=False))


def expected_from_message(tok: MistralTokenizer, msg: AssistantMessage) -> dict[str, Any]:
    """What parsing the rendering must give back: the message, less what the format cannot carry."""
    version = tok.instruct_tokenizer.tokenizer.version
    norm = normalize_message(msg)
    if isinstance(msg.content, str):
        norm["content"] = [{"type": "text", "text": msg.content.rstrip(" ")}]
    for call in norm["tool_calls"]:
        if version >= TokenizerVersion.v13:
            call["id"] = "null"  # v13+ renders no call id
    return norm


# ----------------------------------------------------------------------------
# Raw cases: pieces are text (encoded), "[SPECIAL]" names, or bytes (byte tokens)


def ids_of(tok: MistralTokenizer, pieces: list[Any]) -> list[int]:
    inner = tok.instruct_tokenizer.tokenizer
    ids: list[int] = []
    for p in pieces:
        if isinstance(p, bytes):
            ids.extend(inner.num_special_tokens + b for b in p)
        elif isinstance(p, str) and p.startswith("[") and p.endswith("]") and p in SPECIALS:
            ids.append(inner.get_special_token(p))
        elif p == "</s>":
            ids.append(inner.eos_id)
        else:
            ids.extend(inner.encode(p, bos=False, eos=False))
    return ids


SPECIALS = {"[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[INST]", "[/INST]"}
EOS = "</s>"


def raw_cases(tok: MistralTokenizer) -> list[tuple[str, list[Any]]]:
    inner = tok.instruct_tokenizer.tokenizer
    version = inner.version
    think = _has_think(tok)
    has = {s for s in SPECIALS if s in inner._special_tokens_reverse_vocab}
    cases: list[tuple[str, list[Any]]] = [
        ("eos_only", [EOS]),
        ("text_after_eos", ["before", EOS, "after"]),
        ("eos_twice", ["x", EOS, EOS]),
        ("no_eos", ["cut off mid-sent"]),
        ("split_emoji_bytes", [b"ok \xf0\x9f", b"\x98\x80!", EOS]),
        ("invalid_utf8", [b"a\x80b\xffc\xc0\xafd\xed\xa0\x80e\xf4\x90\x80\x80f", EOS]),
        ("truncated_utf8_at_end", ["caf", b"\xc3"]),
        ("inst_inside_answer", ["a", "[INST]", "b", "[/INST]", EOS]),
        ("split_bytes_around_special", [b"\xe4\xbd", "[INST]", b"\xa0", EOS]),
    ]
    if think:
        cases += [
            ("think_unterminated", ["[THINK]", "still thinking about 🤔", EOS]),
            ("think_unterminated_no_eos", ["[THINK]", "still thinking"]),
            ("think_nested", ["[THINK]", "a", "[THINK]", "b", "[/THINK]", "c", EOS]),
            ("end_think_alone", ["answer", "[/THINK]", "more", EOS]),
            ("think_empty", ["[THINK]", "[/THINK]", "answer", EOS]),
            ("think_then_eos_only", ["[THINK]", "r", "[/THINK]", EOS]),
            ("think_eos_inside", ["[THINK]", "r", EOS, "s", "[/THINK]", "t", EOS]),
            ("think_split_emoji", ["[THINK]", b"\xf0\x9f", "[/THINK]", b"\x98\x80", EOS]),
            ("think_twice", ["[THINK]", "one", "[/THINK]", "mid", "[THINK]", "two", "[/THINK]", "end", EOS]),
            ("answer_then_think", ["pre", "[THINK]", "r", "[/THINK]", "post", EOS]),
            ("think_unclosed_then_call", ["[THINK]", "plan", "[TOOL_CALLS]", "f", "[ARGS]", "{}", EOS]),
            ("eos_eos_after_think", ["[THINK]", "r", "[/THINK]", EOS, EOS]),
        ]
    if version >= TokenizerVersion.v11:
        cases += [
            ("args_without_name", ["[TOOL_CALLS]", "[ARGS]", '{"a": 1}', EOS]),
            ("name_without_args", ["[TOOL_CALLS]", "get_weather", '{"a": 1}', EOS]),
            ("args_twice", ["[TOOL_CALLS]", "f", "[ARGS]", '{"a": 1}', "[ARGS]", "{}", EOS]),
            ("invalid_json", ["[TOOL_CALLS]", "f", "[ARGS]", '{"a": 1', EOS]),
            ("truncated_json_no_eos", ["[TOOL_CALLS]", "f", "[ARGS]", '{"city": "Par']),
            ("single_quotes", ["[TOOL_CALLS]", "f", "[ARGS]", "{'a': 1}", EOS]),
            ("trailing_text", ["[TOOL_CALLS]", "f", "[ARGS]", '{"a": 1} thanks', EOS]),
            ("args_list", ["[TOOL_CALLS]", "f", "[ARGS]", "[1, 2]", EOS]),
            ("args_string", ["[TOOL_CALLS]", "f", "[ARGS]", '"just text"', EOS]),
            ("args_null", ["[TOOL_CALLS]", "f", "[ARGS]", "null", EOS]),
            ("args_number", ["[TOOL_CALLS]", "f", "[ARGS]", "42", EOS]),
            ("args_nan", ["[TOOL_CALLS]", "f", "[ARGS]", '{"x": NaN, "y": -Infinity, "z": 1e400}', EOS]),
            ("args_duplicate_keys", ["[TOOL_CALLS]", "f", "[ARGS]", '{"a": 1, "b": 2, "a": 3}', EOS]),
            ("args_whitespace", ["[TOOL_CALLS]", "f", "[ARGS]", ' \n{ "a" :[1 ,2.50, -0, 1E3] }\t', EOS]),
            ("args_escapes", ["[TOOL_CALLS]", "f", "[ARGS]", '{"s": "\\u00e9\\ud83d\\ude00\\ud800 \\/ \\"q\\""}', EOS]),
            ("args_raw_unicode", ["[TOOL_CALLS]", "météo", "[ARGS]", '{"ville": "Zürich 🏔", "深": {"x": [true, false, null]}}', EOS]),
            ("args_big_numbers", ["[TOOL_CALLS]", "f", "[ARGS]", '{"i": 123456789012345678901234567890, "f": 0.1, "g": 1e-5, "h": 1e16, "k": 12345678912345678.0}', EOS]),
            ("args_control_char", ["[TOOL_CALLS]", "f", "[ARGS]", '{"a": "x\ty"}', EOS]),
            ("two_calls_second_bad", ["[TOOL_CALLS]", "f", "[ARGS]", "{}", "[TOOL_CALLS]", "g", "[ARGS]", "{oops", EOS]),
            ("content_then_calls", ["Let me check.", "[TOOL_CALLS]", "f", "[ARGS]", '{"q": "x"}', "[TOOL_CALLS]", "g", "[ARGS]", "{}", EOS]),
            ("call_then_text_tokens", ["[TOOL_CALLS]", "f", "[ARGS]", "{}", "[INST]", EOS]),
            ("tool_calls_alone", ["[TOOL_CALLS]", EOS]),
            ("name_split_bytes", ["[TOOL_CALLS]", b"m\xc3", b"\xa9t", "[ARGS]", "{}", EOS]),
            ("think_inside_args", ["[TOOL_CALLS]", "f", "[ARGS]", "{", "[THINK]", '"a": 1}', EOS]),
            ("call_id_v", ["[TOOL_CALLS]", "f", "[CALL_ID]", "abc123XYZ", "[ARGS]", '{"a": 1}', EOS]),
            ("call_id_twice", ["[TOOL_CALLS]", "f", "[CALL_ID]", "a", "[CALL_ID]", "b", "[ARGS]", "{}", EOS]),
            ("call_id_without_args", ["[TOOL_CALLS]", "f", "[CALL_ID]", "abc", "{}", EOS]),
            ("args_before_call_id", ["[TOOL_CALLS]", "f", "[ARGS]", "{}", "[CALL_ID]", "abc", EOS]),
            ("args_call_id_args", ["[TOOL_CALLS]", "f", "[ARGS]", "[CALL_ID]", "abc", "[ARGS]", '{"a": 1}', EOS]),
            ("call_id_unicode", ["[TOOL_CALLS]", "f", "[CALL_ID]", "идентификатор", "[ARGS]", "{}", EOS]),
        ]
    else:
        cases += [
            ("list_valid", ["[TOOL_CALLS]", '[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}, "id": "abcdefghi"}]', EOS]),
            ("list_not_list", ["[TOOL_CALLS]", '{"name": "f", "arguments": {}}', EOS]),
            ("list_invalid_json", ["[TOOL_CALLS]", '[{"name": "f", "arguments": {', EOS]),
            ("list_no_name", ["[TOOL_CALLS]", '[{"arguments": {}}]', EOS]),
            ("list_args_not_dict", ["[TOOL_CALLS]", '[{"name": "f", "arguments": "{}"}]', EOS]),
            ("list_args_missing", ["[TOOL_CALLS]", '[{"name": "f"}]', EOS]),
            ("list_name_not_str", ["[TOOL_CALLS]", '[{"name": 1, "arguments": {}}]', EOS]),
            ("list_id_not_str", ["[TOOL_CALLS]", '[{"name": "f", "arguments": {}, "id": 7}]', EOS]),
            ("list_order_of_errors", ["[TOOL_CALLS]", '[{"name": 1, "arguments": {}}, {"name": "g"}]', EOS]),
            ("list_empty", ["[TOOL_CALLS]", "[]", EOS]),
            ("list_item_not_dict", ["[TOOL_CALLS]", '[1, {"name": "f", "arguments": {}}]', EOS]),
            ("list_two_segments", ["[TOOL_CALLS]", '[{"name": "f", "arguments": {}}]', "[TOOL_CALLS]", '[{"name": "g", "arguments": {"x": [1, {"y": null}]}}]', EOS]),
            ("list_content_first", ["Sure:", "[TOOL_CALLS]", '[{"name": "f", "arguments": {"q": "ü"}}]', EOS]),
            ("list_truncated_no_eos", ["[TOOL_CALLS]", '[{"name": "f", "arguments": {"q": 1}}, {"name": "g", "argu']),
            ("list_nan_and_dups", ["[TOOL_CALLS]", '[{"name": "f", "arguments": {"a": NaN, "a": 2, "b": 1e999}, "name": "h"}]', EOS]),
            ("list_whitespace", ["[TOOL_CALLS]", ' [ {"name":"f","arguments":{"k":[1,2]}} ] ', EOS]),
            ("list_strings_with_brackets", ["[TOOL_CALLS]", '[{"name": "f", "arguments": {"s": "]}[{\\"\\\\"}}]', EOS]),
            ("list_trailing_garbage", ["[TOOL_CALLS]", '[{"name": "f", "arguments": {}}] x', EOS]),
            ("list_args_inside_special", ["[TOOL_CALLS]", '[{"name": "f", ', "[INST]", '"arguments": {}}]', EOS]),
            ("tool_calls_alone", ["[TOOL_CALLS]", EOS]),
        ]
    return [(label, [p for p in pieces if not (isinstance(p, str) and p in SPECIALS and p not in has)]) for label, pieces in cases]


FUZZ_TEXT = [
    "a", "hello", " world", "😀", "ü", "{", "}", "[", "]", '"', ":", ",", "1", "null", "true",
    '{"a": 1}', '[{"name": "f", "arguments": {}}]', "get_x", '"name"', '"arguments"', "\\", "\n",
]
FUZZ_BYTES = [b"\xf0", b"\x9f", b"\x98", b"\x80", b"\xc3", b"\xa9", b"\xff"]


def fuzz_cases(tok: MistralTokenizer, rng: random.Random, n: int) -> list[tuple[str, list[Any]]]:
    inner = tok.instruct_tokenizer.tokenizer
    specials = [s for s in ["[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[INST]"] if s in inner._special_tokens_reverse_vocab]
    out = []
    for i in range(n):
        pieces: list[Any] = []
        for _ in range(rng.randrange(1, 14)):
            r = rng.random()
            if r < 0.35:
                pieces.append(rng.choice(specials))
            elif r < 0.45:
                pieces.append(EOS)
            elif r < 0.6:
                pieces.append(rng.choice(FUZZ_BYTES))
            else:
                pieces.append(rng.choice(FUZZ_TEXT))
        out.append((f"fuzz/{i}", pieces))
    return out


def mutated_cases(
    tok: MistralTokenizer, rendered: list[list[int]], rng: random.Random, n: int
) -> list[tuple[str, list[int]]]:
    """Rendered outputs with 1-3 ids deleted, duplicated or replaced by a control token,
    EOS or a byte token: near-misses of the well-formed syntax."""
    inner = tok.instruct_tokenizer.tokenizer
    specials = [inner.get_special_token(s) for s in sorted(SPECIALS) if s in inner._special_tokens_reverse_vocab]
    specials.append(inner.eos_id)
    out = []
    for i in range(n):
        ids = list(rng.choice(rendered))
        for _ in range(rng.randrange(1, 4)):
            if not ids:
                break
            at = rng.randrange(len(ids))
            op = rng.randrange(4)
            if op == 0:
                del ids[at]
            elif op == 1:
                ids.insert(at, ids[at])
            elif op == 2:
                ids[at] = rng.choice(specials)
            else:
                ids.insert(at, inner.num_special_tokens + rng.randrange(128, 256))
        if ids:
            out.append((f"mutated/{i}", ids))
    return out


# ----------------------------------------------------------------------------
# Generation and checking


def build_cases(
    tokenizers: dict[str, tuple[MistralTokenizer, dict[str, Any]]], fuzz: int = 40
) -> tuple[list[dict[str, Any]], list[str]]:
    cases: list[dict[str, Any]] = []
    problems: list[str] = []
    for name, (tok, _source) in tokenizers.items():
        rng = random.Random(f"parse/{name}")
        rendered: list[list[int]] = []
        for label, msg in rendered_messages(tok, rng):
            ids = render(tok, msg)
            rendered.append(ids)
            expected = reference_parse(tok, ids)
            want = expected_from_message(tok, msg)
            if expected != want:
                problems.append(f"{name} {label}: parse(render(msg)) != msg\n  parsed {expected}\n  msg    {want}")
            cases.append({"tokenizer": name, "label": f"rendered/{label}", "ids": ids, "expected": expected})
        for label, pieces in raw_cases(tok) + fuzz_cases(tok, rng, fuzz):
            ids = ids_of(tok, pieces)
            cases.append({"tokenizer": name, "label": f"raw/{label}" if not label.startswith("fuzz") else label, "ids": ids, "expected": reference_parse(tok, ids)})
        for label, ids in mutated_cases(tok, rendered, rng, fuzz // 2):
            cases.append({"tokenizer": name, "label": label, "ids": ids, "expected": reference_parse(tok, ids)})
    return cases, problems


def golden_document(tokenizers: dict[str, tuple[MistralTokenizer, dict[str, Any]]], cases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "generator": "tests/reference/text/parse_reference.py",
        "mistral_common": mistral_common.__version__,
        "tokenizers": {name: source for name, (_tok, source) in tokenizers.items()},
        "cases": cases,
    }


def write_golden(doc: dict[str, Any], path: Path) -> None:
    # One case per line: small diffs, and still plain JSON.
    lines = ["{"]
    for key in ("generator", "mistral_common", "tokenizers"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(doc[key], ensure_ascii=False, sort_keys=True)},")
    lines.append('  "cases": [')
    body = [f"    {json.dumps(c, ensure_ascii=False, separators=(',', ':'))}" for c in doc["cases"]]
    lines.append(",\n".join(body))
    lines.append("  ]")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def summarize(cases: list[dict[str, Any]]) -> str:
    by: dict[str, list[int]] = {}
    for c in cases:
        s = by.setdefault(c["tokenizer"], [0, 0, 0])
        s[0] += 1
        s[1] += "error" in c["expected"]
        s[2] += bool(c["expected"].get("tool_calls"))
    return ", ".join(f"{k}: {v[0]} cases ({v[1]} rejected, {v[2]} with tool calls)" for k, v in by.items())


def cmd_generate(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = load_tokenizers(Path(tmp))
    cases, problems = build_cases(tokenizers, args.fuzz)
    if problems:
        print("\n".join(problems))
        return 1
    write_golden(golden_document(tokenizers, cases), Path(args.out))
    print(f"wrote {args.out}: {len(cases)} cases; {summarize(cases)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = load_tokenizers(Path(tmp))
    cases, problems = build_cases(tokenizers)
    golden = json.loads(Path(args.golden).read_text(encoding="utf-8"))
    if golden["tokenizers"] != {n: s for n, (_t, s) in tokenizers.items()}:
        problems.append("tokenizer sources differ from the golden's")
    if len(golden["cases"]) != len(cases):
        problems.append(f"{len(cases)} live cases, {len(golden['cases'])} in the golden")
    for live, gold in zip(cases, golden["cases"]):
        if live != gold:
            problems.append(f"{gold['tokenizer']} {gold['label']}: live {live} != golden {gold}")
    print(f"checked {len(cases)} cases against {golden['mistral_common']} goldens with mistral-common {mistral_common.__version__}; {summarize(cases)}")
    if problems:
        print(f"{len(problems)} problem(s):")
        print("\n".join(problems[:50]))
        return 1
    print("OK: identical")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", default=str(GOLDEN))
    g.add_argument("--fuzz", type=int, default=40, help="random sequences per tokenizer (40 in the committed goldens)")
    c = sub.add_parser("check")
    c.add_argument("--golden", default=str(GOLDEN))
    args = parser.parse_args()
    return cmd_generate(args) if args.cmd == "generate" else cmd_check(args)


if __name__ == "__main__":
    sys.exit(main())
