#!/usr/bin/env python3
"""Chat requests rendered by mistral-common, the reference for Sirocco's instruct format.

Every request in chats/requests.jsonl is rendered with
`MistralTokenizer.from_file(FILE).encode_chat_completion(
    ChatCompletionRequest.model_validate_json(TEXT))`
for every tokenizer file: the two the package ships (tekken_240718 and
tekken_240911, both v3) and the v7/v11/v13/v15 files built from
tekken_240911.json plus each version's special tokens
(engine/text/data/tekken_versions.json; strings_reference.build_derived, the
Python twin of engine/text/tekken_file.h). The result is either the ids and
the text (Tokenized.text: the ids decoded with special tokens kept) or the
exception mistral-common raised: its class and message, and for pydantic's
ValidationError the location and type of the first error. The requests are
hand-written (every message kind, both reasoning efforts and none, images,
tool calls, prefixes, and the rejections) plus a seeded generator of mixed
conversations; Sirocco must give the same ids and text, or the same rejection.
The goldens are committed; tests/unit/text/instruct_golden_test.cc checks
Sirocco against them without Python.

    generate               write chats/requests.jsonl and chats/golden.json
    check [--sirocco BIN]  re-render everything with mistral-common and compare
                           with the goldens; with --sirocco, also run
                           `BIN tokenize --tokenizer FILE --chat REQUEST.json`
                           for every (request, tokenizer) and compare

Run it in the project's virtual environment (.venv/bin/python).

Pixels play no part in the ids (only the image size does) and mistral-common
needs OpenCV only to resize them, which the environment does not install; so
`transform_image` is replaced by one that opens the image fully with Pillow
(bad data still fails) and returns an empty array of the size the reference
computes.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

warnings.simplefilter("ignore")

import mistral_common  # noqa: E402
import mistral_common.tokens.tokenizers.image as mc_image  # noqa: E402
from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHATS = HERE / "chats"
REQUESTS = CHATS / "requests.jsonl"
GOLDEN = CHATS / "golden.json"


def _transform_image_without_opencv(image: Image.Image, new_size: tuple[int, int]) -> np.ndarray:
    mc_image._convert_to_rgb(image)  # decodes every pixel: corrupt data still raises
    return np.zeros((3, new_size[1], new_size[0]), dtype=np.float32)


mc_image.transform_image = _transform_image_without_opencv

# ---------------------------------------------------------------------------
# Tokenizer files


def tokenizer_files(tmp: Path) -> dict[str, tuple[Path, dict]]:
    """name -> (tekken.json path, how the C++ test gets the same file): the
    shipped files ({"file": NAME}) and the derived ones ({"derived": VERSION}),
    built by strings_reference.build_derived exactly as engine/text/tekken_file.cc
    builds them (strings_reference.py check verifies the two agree byte for byte)."""
    import strings_reference

    shipped = {p.stem: p for p in strings_reference.shipped_files()}
    files = {name: (path, {"file": path.name}) for name, path in shipped.items()}
    spec = json.loads(strings_reference.SPEC.read_text(encoding="utf-8"))
    base = shipped[Path(spec["base_vocabulary"]).stem]
    for version in spec["versions"]:
        path = tmp / f"tekken_{version}.json"
        path.write_text(json.dumps(strings_reference.build_derived(base, version)), encoding="utf-8")
        files[version] = (path, {"derived": version})
    return files


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


def _image_b64(size: tuple[int, int], fmt: str, color: tuple[int, int, int] = (200, 30, 60)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color=color).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _data_url(size: tuple[int, int], fmt: str) -> str:
    return f"data:image/{fmt.lower()};base64,{_image_b64(size, fmt)}"


def u(content: Any) -> dict:
    return {"role": "user", "content": content}


def s(content: Any) -> dict:
    return {"role": "system", "content": content}


def a(content: Any = None, tool_calls: list | None = None, prefix: bool | None = None) -> dict:
    m: dict[str, Any] = {"role": "assistant"}
    if content is not None:
        m["content"] = content
    if tool_calls is not None:
        m["tool_calls"] = tool_calls
    if prefix is not None:
        m["prefix"] = prefix
    return m


def t(call_id: str | None, content: Any, name: str | None = None) -> dict:
    m: dict[str, Any] = {"role": "tool", "content": content}
    if call_id is not None:
        m["tool_call_id"] = call_id
    if name is not None:
        m["name"] = name
    return m


def call(call_id: str | None, name: str, arguments: Any) -> dict:
    c: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        c["id"] = call_id
    return c


def text(x: str) -> dict:
    return {"type": "text", "text": x}


def think(x: str, closed: bool | None = None) -> dict:
    c: dict[str, Any] = {"type": "thinking", "thinking": x}
    if closed is not None:
        c["closed"] = closed
    return c


def image(size: tuple[int, int], fmt: str = "PNG", data_url: bool = False) -> dict:
    return {"type": "image", "image": _data_url(size, fmt) if data_url else _image_b64(size, fmt)}


def image_url(size: tuple[int, int], fmt: str = "PNG", as_object: bool = False) -> dict:
    url = _data_url(size, fmt)
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"} if as_object else url}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14, "default": 1},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "web-search_v2",
        "description": "Recherche sur le Web — résultats triés.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "number", "default": 1e1}},
        },
        "strict": True,
    },
}
NO_PARAMS = {"type": "function", "function": {"name": "now", "parameters": {}}}

ID1, ID2, ID3 = "abcDEF123", "XyZ987654", "q1w2e3r4t"


def hand_written() -> list[tuple[str, Any]]:
    """(name, request) pairs; a request that is a str is sent as raw text."""
    r: list[tuple[str, Any]] = []
    add = lambda name, **req: r.append((name, req))  # noqa: E731

    # Plain conversations.
    add("user_only", messages=[u("Hello!")])
    add("system_user", messages=[s("You are terse."), u("What is 2+2?")])
    add("multi_turn", messages=[u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")])
    add("multi_turn_system_mid", messages=[u("Hi"), a("Hey."), u("ok"), s("Answer in French."), u("How are you?")])
    add("two_systems", messages=[s("Rule one."), s("Rule two."), u("Go")])
    add("consecutive_users", messages=[u("First part."), u("Second part."), a("Got both."), u("Third")])
    add("consecutive_assistants", messages=[u("Q"), a("Part A."), a("Part B."), u("More")])
    add("user_text_chunks", messages=[u([text("chunk one"), text("chunk two")])])
    add("user_chunks_then_string", messages=[u([text("a")]), u("b"), u([text("c"), text("d")])])
    add("system_chunks", messages=[s([text("You are"), text(" helpful.")]), u("hi")])
    add("assistant_trailing_spaces", messages=[u("x"), a("answer with spaces   "), u("y")])
    add("special_token_text", messages=[u("[INST] not special [/INST] </s> <s> [TOOL_CALLS] [IMG]")])
    add("unicode", messages=[s("Réponds en 日本語 🙂"), u("Ça va? Привет! 👩‍💻 مرحبا ∑x² \u00a0tab\there\nnewline")])
    add("whitespace_runs", messages=[u("   leading\n\n\n\ttrailing   "), a("  ok  "), u("\n")])
    add("empty_user", messages=[u("")])
    add("starts_with_assistant", messages=[a("I start."), u("Then the user.")])
    add("system_only", messages=[s("Only a system prompt.")])
    add("system_last", messages=[u("hi"), a("hello"), s("late system")])
    add("sampling_fields", messages=[u("hi")], temperature=0.3, top_p=0.9, max_tokens=64, random_seed=7,
        model="mistral-small-4", parallel_tool_calls=False, tool_choice="none")
    add("empty_system_content", messages=[s(""), u("hi")])

    # Tools.
    add("tools_single_turn", messages=[u("Weather in Paris?")], tools=[WEATHER])
    add("tools_multi_turn", messages=[s("Use tools."), u("Hi"), a("Hello."), u("Weather in Oslo?")],
        tools=[WEATHER, SEARCH, NO_PARAMS], tool_choice="auto")
    add("tools_empty_list", messages=[u("hi")], tools=[])
    add("tool_choice_named", messages=[u("hi")], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    add("tool_call_and_result", tools=[WEATHER], messages=[
        u("Weather in Paris?"),
        a(tool_calls=[call(ID1, "get_weather", '{"city": "Paris", "unit": "celsius"}')]),
        t(ID1, '{"temperature": 21.5, "sky": "clear"}', name="get_weather"),
    ])
    add("tool_call_full_loop", tools=[WEATHER], messages=[
        s("Be helpful."),
        u("Weather in Paris?"),
        a(tool_calls=[call(ID1, "get_weather", '{"city":"Paris"}')]),
        t(ID1, "sunny, 21°C"),
        a("It is sunny and 21°C in Paris."),
        u("And tomorrow?"),
    ])
    add("parallel_tool_calls", tools=[WEATHER, SEARCH], messages=[
        u("Weather in Paris and news about it"),
        a(tool_calls=[call(ID1, "get_weather", {"city": "Paris"}),
                      call(ID2, "web-search_v2", {"query": "Paris news", "limit": 3})]),
        t(ID1, "rain"),
        t(ID2, '[{"title": "Seine"}]'),
    ])
    add("tool_results_reordered", tools=[WEATHER, SEARCH], messages=[
        u("Three things"),
        a(tool_calls=[call(ID1, "get_weather", {"city": "A"}), call(ID2, "get_weather", {"city": "B"}),
                      call(ID3, "web-search_v2", {"query": "C"})]),
        t(ID3, "third"),
        t(ID1, "first"),
        t(ID2, "second"),
    ])
    add("tool_arguments_values", tools=[NO_PARAMS], messages=[
        u("values"),
        a(tool_calls=[call(ID1, "now", '{"f": 1.50, "e": 1e5, "small": 0.00001, "neg": -0.0, "big": 12345678901234567890123, '
                                      '"t": true, "n": null, "s": "é\\u00e9\\n\\"q\\"", "nested": {"b": [1, 2.0, {}]}, '
                                      '"dup": 1, "dup": 2, "exp": 1.5E+300}')]),
        t(ID1, "ok"),
    ])
    add("tool_arguments_edge", tools=[NO_PARAMS], messages=[
        u("edge"),
        a(tool_calls=[call(ID1, "now", ""), call(ID2, "now", None), call(ID3, "now", "not json {")]),
        t(ID1, ""), t(ID2, "  {\"a\" : [1,2]}  "), t(ID3, "[1, 2, 3]"),
    ])
    add("tool_arguments_scalar_json", tools=[NO_PARAMS], messages=[
        u("scalars"),
        a(tool_calls=[call(ID1, "now", '"just a string"'), call(ID2, "now", "42")]),
        t(ID1, "true"), t(ID2, "null"),
    ])
    add("tool_content_chunks", tools=[WEATHER], messages=[
        u("w"),
        a(tool_calls=[call(ID1, "get_weather", {"city": "Rome"})]),
        t(ID1, [text("part one"), text("part two")]),
    ])
    add("assistant_content_and_tool_calls", tools=[WEATHER], messages=[
        u("w"),
        a("Let me check.", tool_calls=[call(ID1, "get_weather", {"city": "Rome"})]),
        t(ID1, "hot"),
    ])
    add("assistants_merged_content_then_call", tools=[WEATHER], messages=[
        u("w"),
        a("Let me check."),
        a(tool_calls=[call(ID1, "get_weather", {"city": "Rome"})]),
        t(ID1, "hot"),
    ])
    add("tool_turn_then_user", tools=[WEATHER], messages=[
        u("a"),
        a(tool_calls=[call(ID1, "get_weather", {"city": "X"})]),
        t(ID1, "x"),
        u("b"),
        a(tool_calls=[call(ID2, "get_weather", {"city": "Y"})]),
        t(ID2, "y"),
    ])
    add("tool_result_without_call", messages=[u("a"), a("no call"), t(ID1, "orphan")])

    # Reasoning effort and model settings.
    add("reasoning_high", messages=[u("Think hard.")], reasoning_effort="high")
    add("reasoning_none", messages=[u("Quick.")], reasoning_effort="none")
    add("reasoning_null", messages=[u("Default.")], reasoning_effort=None)
    add("reasoning_high_with_tools", messages=[s("sys"), u("q")], tools=[WEATHER], reasoning_effort="high")
    add("reasoning_medium", messages=[u("q")], reasoning_effort="medium")
    add("reasoning_unknown", messages=[u("q")], reasoning_effort="extreme")
    add("reasoning_high_no_user", messages=[s("only system")], reasoning_effort="high")
    add("response_format_json_schema", messages=[u("json please")], reasoning_effort="high",
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": {"type": "object",
                                                                       "properties": {"x": {"type": "number"}}}}})
    add("response_format_json_object", messages=[u("json please")], response_format={"type": "json_object"})

    # Reasoning in history and prefixes.
    add("think_history", messages=[u("q1"), a([think("Let me think."), text("Answer 1.")]), u("q2")],
        reasoning_effort="high")
    add("think_two_chunks", messages=[u("q1"), a([think("step 1"), think("step 2"), text("A")]), u("q2")])
    add("think_open_prefix", messages=[u("q"), a([think("partial reasoning", closed=False)], prefix=True)])
    add("think_closed_prefix", messages=[u("q"), a([think("done"), text("The answer is")], prefix=True)])
    add("prefix_string", messages=[u("Write a haiku"), a("An old silent pond", prefix=True)])
    add("prefix_trailing_space", messages=[u("Continue"), a("Once upon a time ", prefix=True)])
    add("continue_final_message", messages=[u("Continue"), a("Once")], continue_final_message=True)
    add("think_in_system", messages=[s([text("sys"), think("sys thought")]), u("q")])
    add("think_then_tool_call", tools=[WEATHER], messages=[
        u("w"),
        a([think("I should call the tool.")], tool_calls=[call(ID1, "get_weather", {"city": "Nice"})]),
        t(ID1, "warm"),
    ])

    # Images.
    add("image_png", messages=[u([text("What is this?"), image((40, 30))])])
    add("image_first_then_text", messages=[u([image((40, 30)), text("Describe.")])])
    add("image_data_url_jpeg", messages=[u([image((640, 480), "JPEG", data_url=True), text("Describe.")])])
    add("image_url_string", messages=[u([text("Look:"), image_url((17, 1025), "JPEG")])])
    add("image_url_object", messages=[u([image_url((33, 20), "BMP", as_object=True), text("and this")])])
    add("image_downscaled_wide", messages=[u([image((2000, 300))]), a("A red strip."), u("Thanks")])
    add("image_gif_webp", messages=[u([image((3, 3), "GIF"), text("between"), image((50, 60), "WEBP")])])
    add("image_text_image_text", messages=[u([text("A"), image((40, 30)), text("B"), image((16, 16))])])
    add("image_with_system_v3", messages=[s("sys"), u("first"), a("ok"), u([text("see"), image((40, 30))])])
    add("image_in_tool_result", tools=[NO_PARAMS], messages=[
        u("take a picture"),
        a(tool_calls=[call(ID1, "now", {})]),
        t(ID1, [text("photo:"), image((40, 30))]),
    ])
    add("image_url_bad_base64", messages=[u([{"type": "image_url", "image_url": "data:image/png;base64,@@@@"}])])
    add("image_url_http", messages=[u([{"type": "image_url", "image_url": "ftp://example.com/x.png"}])])

    # Corners of the normalizer and the encoder.
    add("think_open_in_history", messages=[u("q1"), a([think("unfinished", closed=False), text("A")]), u("q2")])
    add("assistant_text_chunks_rstrip", messages=[u("q"), a([text("x  "), text("y  ")]), u("r")])
    add("assistant_rstrip_only_spaces", messages=[u("q"), a("x \n \t "), u("r")])
    add("assistant_empty_tool_calls_list", messages=[u("q"), a("text", tool_calls=[]), u("r")])
    add("prefix_after_tool_calls", tools=[WEATHER], messages=[
        u("w"), a(tool_calls=[call(ID1, "get_weather", {"city": "A"})]), t(ID1, "a"), a("The weather", prefix=True)])
    add("duplicate_result_ids", tools=[WEATHER], messages=[
        u("w"), a(tool_calls=[call(ID1, "get_weather", {"city": "A"}), call(ID2, "get_weather", {"city": "B"})]),
        t(ID1, "a"), t(ID1, "b")])
    add("names_with_final_newline", tools=[NO_PARAMS], messages=[
        u("w"), a(tool_calls=[call(ID1 + "\n", "now\n", {})]), t(ID1 + "\n", "ok", name="now\n")])
    add("name_64_chars", messages=[u("w")], tools=[{"function": {"name": "n" * 64, "parameters": {}}}])
    add("name_65_chars", messages=[u("w")], tools=[{"function": {"name": "n" * 65, "parameters": {}}}])
    add("unicode_call_id", tools=[NO_PARAMS], messages=[
        u("w"), a(tool_calls=[call("αβγ-δ", "now", {})]), t("αβγ-δ", "ok")])
    add("empty_tool_result_text", tools=[NO_PARAMS], messages=[
        u("w"), a(tool_calls=[call(ID1, "now", {})]), t(ID1, "")])
    add("user_empty_chunk_list", messages=[u([]), a("?"), u("x")])
    add("user_image_with_empty_text", messages=[u([text(""), image((40, 30))])])
    add("user_image_text_image", messages=[u([image((40, 30)), text("between"), image((20, 20))])])
    add("image_max_width", messages=[u([image((1540, 280))])])
    add("image_odd_downscale", messages=[u([image((1541, 700)), text("odd"), image((3000, 3))])])
    add("long_text", messages=[u("lorem ipsum dolor sit amet " * 200), a("ok " * 100), u("again")])
    add("tools_and_images_v15", tools=[WEATHER], reasoning_effort="high", messages=[
        s("sys"), u([text("look"), image((100, 50))]), a("A red box."), u("weather?")])

    # Rejections.
    add("bad_role", messages=[{"role": "robot", "content": "beep"}])
    add("missing_content", messages=[{"role": "user"}])
    add("extra_field", messages=[{"role": "user", "content": "x", "name": "bob"}])
    add("content_wrong_type", messages=[u(5)])
    add("unknown_chunk_type", messages=[u([{"type": "video", "url": "x"}])])
    add("unknown_request_field", messages=[u("x")], frequency_penalty=0.5)
    add("temperature_out_of_range", messages=[u("x")], temperature=2)
    add("empty_messages", messages=[])
    add("single_assistant", messages=[a("alone")])
    add("last_assistant_no_prefix", messages=[u("q"), a("answer")])
    add("tool_after_user", messages=[u("q"), t(ID1, "x")])
    add("system_after_assistant", messages=[u("q"), a("a"), s("s"), u("r")])
    add("calls_without_results", tools=[WEATHER], messages=[
        u("w"),
        a(tool_calls=[call(ID1, "get_weather", {"city": "A"}), call(ID2, "get_weather", {"city": "B"})]),
        t(ID1, "a"),
        a("done"),
        u("ok"),
    ])
    add("bad_tool_call_id", tools=[WEATHER], messages=[
        u("w"), a(tool_calls=[call("short", "get_weather", {"city": "A"})]), t("short", "a")])
    add("missing_tool_call_id", tools=[WEATHER], messages=[
        u("w"), a(tool_calls=[call(None, "get_weather", {"city": "A"})]), t(None, "a")])
    add("duplicate_tool_call_ids", tools=[WEATHER], messages=[
        u("w"), a(tool_calls=[call(ID1, "get_weather", {"city": "A"}), call(ID1, "get_weather", {"city": "B"})]),
        t(ID1, "a"), t(ID1, "b")])
    add("bad_function_name", messages=[
        u("w"), a(tool_calls=[call(ID1, "get weather!", {})]), t(ID1, "a")])
    add("bad_tool_name", messages=[u("w")], tools=[{"function": {"name": "bad name", "parameters": {}}}])
    add("bad_tool_schema", messages=[u("w")],
        tools=[{"function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}}}])
    add("bad_tool_message_name", tools=[WEATHER], messages=[
        u("w"), a(tool_calls=[call(ID1, "get_weather", {})]), t(ID1, "a", name="no spaces allowed")])
    add("prefix_not_last", messages=[u("q"), a("a", prefix=True), u("r")])
    add("think_in_user", messages=[u([think("user thoughts")])])
    add("image_in_system", messages=[s([image((40, 30))]), u("x")])
    add("image_undecodable", messages=[u([{"type": "image", "image": base64.b64encode(b"not an image").decode()}])])
    add("audio_chunk", messages=[u([{"type": "input_audio", "input_audio": "UklGRgAAAABXQVZF"}])])
    add("truncate_for_context", messages=[u("x")], truncate_for_context_length=True)
    add("empty_assistant", messages=[u("q"), a(""), u("r")])
    add("assistant_none_content", messages=[u("q"), a(), u("r")])
    add("continue_final_message_on_user", messages=[u("x")], continue_final_message=True)
    add("tool_call_missing_arguments", messages=[u("w"), a(tool_calls=[{"id": ID1, "function": {"name": "f"}}])])
    add("max_tokens_negative", messages=[u("x")], max_tokens=-1)
    add("prefix_bool_string", messages=[u("q"), a("go", prefix="yes")])
    add("image_bad_data_url", messages=[u([{"type": "image", "image": "data:image/png,AAAA"}])])
    add("empty_tool_message_name", tools=[NO_PARAMS], messages=[
        u("w"), a(tool_calls=[call(ID1, "now", {})]), t(ID1, "ok", name="")])
    add("null_call_id", tools=[NO_PARAMS], messages=[u("w"), a(tool_calls=[call("null", "now", {})]), t("null", "ok")])
    add("tool_message_without_id", tools=[NO_PARAMS], messages=[u("w"), a(tool_calls=[call(ID1, "now", {})]), t(None, "ok")])
    add("chunk_extra_field", messages=[u([{"type": "text", "text": "x", "extra": 1}])])
    add("tool_call_bad_type", messages=[u("w"), a(tool_calls=[{"id": ID1, "type": "fn", "function": {"name": "f", "arguments": "{}"}}])])
    add("tools_not_a_list", messages=[u("w")], tools={"function": {"name": "f", "parameters": {}}})
    add("bad_tool_choice", messages=[u("w")], tool_choice="sometimes")
    r.append(("invalid_json", '{"messages": [{"role": "user", "content": "x"}'))
    r.append(("not_an_object", '[{"role": "user", "content": "x"}]'))
    return r


# Text pools for generated conversations: scripts, emoji, code, digits, runs of
# whitespace, special-token look-alikes.
_TEXTS = [
    "Hello there", "Bonjour, ça va ?", "日本語のテキストです。", "Привет, как дела?", "مرحبا بالعالم",
    "नमस्ते दुनिया", "한국어 문장", "emoji 🚀🔥👍🏽 and flags 🇫🇷", "def f(x):\n    return x ** 2\n",
    "SELECT * FROM t WHERE id = 42;", "1234567890 3.14159 -0.5e-3", "   lots   of    spaces   ",
    "\n\n\ttabs\tand\nnewlines\n", "MiXeD CaSe WoRdS", "[INST] fake [/INST] [THINK] not [/THINK]",
    "<s> </s> <unk> [IMG_BREAK]", "a" * 300, "Ünïcödé ñ ß Ω ≈ ∞", "",
]


def generated(seed: int = 1234, count: int = 30) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    tools_pool = [WEATHER, SEARCH, NO_PARAMS]
    out: list[tuple[str, Any]] = []
    for n in range(count):
        messages: list[dict] = []
        if rng.random() < 0.5:
            messages.append(s(rng.choice(_TEXTS) or "sys"))
        turns = rng.randint(1, 4)
        counter = 0
        for turn in range(turns):
            if rng.random() < 0.3:
                messages.append(u([text(rng.choice(_TEXTS)), text(rng.choice(_TEXTS))]))
            else:
                messages.append(u(rng.choice(_TEXTS)))
            if turn == turns - 1:
                break
            kind = rng.random()
            if kind < 0.35:
                calls = []
                for _ in range(rng.randint(1, 3)):
                    counter += 1
                    cid = f"{n:03d}call{counter:02d}"[:9].ljust(9, "x")
                    args = {"q": rng.choice(_TEXTS), "k": rng.randint(-10**6, 10**6), "f": rng.random()}
                    calls.append(call(cid, rng.choice(["get_weather", "web-search_v2", "now"]),
                                      json.dumps(args, ensure_ascii=rng.random() < 0.5)))
                messages.append(a(tool_calls=calls))
                order = list(calls)
                rng.shuffle(order)
                for c in order:
                    messages.append(t(c["id"], rng.choice(['{"ok": true}', "plain result", "", "[1, 2]"])))
                messages.append(a(rng.choice(_TEXTS) or "done"))
            elif kind < 0.45:
                messages.append(a([think(rng.choice(_TEXTS)), text(rng.choice(_TEXTS) or "x")]))
            else:
                messages.append(a(rng.choice(_TEXTS) or "reply"))
        req: dict[str, Any] = {"messages": messages}
        if rng.random() < 0.5:
            req["tools"] = rng.sample(tools_pool, rng.randint(1, 3))
        effort = rng.choice([None, None, None, None, None, "none", "high"])
        if effort is not None:
            req["reasoning_effort"] = effort
        if rng.random() < 0.2:
            messages.append(a(rng.choice(_TEXTS) or "prefix", prefix=True))
        out.append((f"generated_{n:02d}", req))
    return out


def all_requests() -> list[tuple[str, str]]:
    """(name, request JSON text): the exact text both sides read."""
    out = []
    for name, req in hand_written() + generated():
        out.append((name, req if isinstance(req, str) else json.dumps(req, ensure_ascii=False)))
    return out


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

# Messages that quote a Python repr of the message after a fixed phrase: only
# the phrase is compared.
_REPR_PHRASES = (
    "Cannot have tool calls and content defined in the same assistant message",
    "Invalid assistant message:",
    "Tool calls and content cannot be used together in the same message.",
)


def render(tokenizer: MistralTokenizer, request_text: str) -> dict:
    try:
        request = ChatCompletionRequest.model_validate_json(request_text)
        tokenized = tokenizer.encode_chat_completion(request)
    except Exception as e:  # noqa: BLE001 -- every rejection is recorded
        error: dict[str, Any] = {"class": type(e).__name__}
        if hasattr(e, "errors") and type(e).__name__ == "ValidationError":
            first = e.errors()[0]
            # The location as pydantic prints it (no line at all for the root).
            error["loc"] = str(e).split("\n")[1] if first["loc"] else ""
            error["type"] = first["type"]
            error["message"] = first["msg"]
        else:
            message = str(e)
            error["message"] = message
            error["key"] = next((p for p in _REPR_PHRASES if message.startswith(p)), message)
        return {"error": error}
    return {"ids": list(tokenized.tokens), "text": tokenized.text}


def render_all(files: dict[str, tuple[Path, dict]]) -> list[dict]:
    requests = all_requests()
    rows = []
    for tok_name, (path, _source) in files.items():
        tokenizer = MistralTokenizer.from_file(str(path))
        for name, request_text in requests:
            rows.append({"request": name, "tokenizer": tok_name, **render(tokenizer, request_text)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_golden(files: dict[str, tuple[Path, dict]], rows: list[dict]) -> None:
    """One JSON document, one rendering per line (diffs stay readable)."""
    head = {
        "generator": f"tests/reference/text/chat_reference.py, mistral-common {mistral_common.__version__}",
        "tokenizers": {name: source for name, (_path, source) in files.items()},
    }
    lines = [json.dumps(head, ensure_ascii=False)[:-1] + ', "results": [']
    lines += [json.dumps(r, ensure_ascii=False) + ("," if i + 1 < len(rows) else "") for i, r in enumerate(rows)]
    lines.append("]}")
    GOLDEN.write_text("\n".join(lines) + "\n", encoding="utf-8")


def cmd_generate(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        files = tokenizer_files(Path(tmp))
        write_jsonl(REQUESTS, [{"name": n, "json": j} for n, j in all_requests()])
        rows = render_all(files)
        write_golden(files, rows)
    rejected = sum(1 for r in rows if "error" in r)
    print(f"{len(all_requests())} requests x {len(files)} tokenizers = {len(rows)} renderings "
          f"({len(rows) - rejected} rendered, {rejected} rejected) -> {GOLDEN.relative_to(HERE.parent.parent.parent)}")
    return 0


def _sirocco_render(binary: str, tokenizer: Path, request_text: str, req_path: Path) -> dict:
    req_path.write_text(request_text, encoding="utf-8")
    proc = subprocess.run([binary, "tokenize", "--tokenizer", str(tokenizer), "--chat", str(req_path)],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    return {"exit": proc.returncode, "stderr": proc.stderr}


def _same_rejection(expected: dict, stderr: str) -> bool:
    cls = expected["class"]
    if f"{cls}: " not in stderr:
        return False
    if cls == "ValidationError":
        where = f"\n{expected['loc']}\n" if expected["loc"] else "ChatCompletionRequest\n  "
        return where in stderr and f"[type={expected['type']}]" in stderr
    return expected["key"] in stderr


def cmd_check(args: argparse.Namespace) -> int:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))["results"]
    committed_requests = {r["name"]: r["json"] for r in read_jsonl(REQUESTS)}
    failures = 0
    if committed_requests != dict(all_requests()):
        print("FAIL: chats/requests.jsonl differs from the requests this script builds (run generate)")
        failures += 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = tokenizer_files(tmp)
        live = render_all(files)
        key = lambda r: (r["request"], r["tokenizer"])  # noqa: E731
        golden_by_key = {key(r): r for r in golden}
        for row in live:
            if golden_by_key.get(key(row)) != row:
                failures += 1
                print(f"FAIL golden != mistral-common today: {key(row)}")
        print(f"mistral-common vs goldens: {len(live)} renderings, {failures} differ")
        if args.sirocco:
            # One process per rendering (the CLI contract), several at a time.
            def run(i_row: tuple[int, dict]) -> tuple[dict, dict]:
                i, row = i_row
                got = _sirocco_render(args.sirocco, files[row["tokenizer"]][0], committed_requests[row["request"]],
                                      tmp / f"request_{i}.json")
                return row, got

            bad = 0
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                for row, got in pool.map(run, enumerate(live)):
                    if "error" in row:
                        ok = got.get("exit") == 2 and _same_rejection(row["error"], got.get("stderr", ""))
                    else:
                        ok = got.get("ids") == row["ids"] and got.get("text") == row["text"]
                    if not ok:
                        bad += 1
                        print(f"FAIL sirocco {key(row)}: expected {json.dumps(row, ensure_ascii=False)[:300]}\n"
                              f"  got {json.dumps(got, ensure_ascii=False)[:300]}")
            print(f"sirocco vs mistral-common: {len(live)} renderings, {bad} differ")
            failures += bad
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate")
    check = sub.add_parser("check")
    check.add_argument("--sirocco", help="path to the sirocco binary")
    args = parser.parse_args()
    return cmd_generate(args) if args.command == "generate" else cmd_check(args)


if __name__ == "__main__":
    sys.exit(main())
