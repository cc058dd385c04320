#!/usr/bin/python3
"""Checks Sirocco's structured-output grammars against Python's jsonschema.

Usage: jsonschema_check.py PATH/TO/structured_walk

For every schema below: (1) structured_walk generates documents by seeded
random walks through the compiled matcher; each must parse with json.loads
and validate with jsonschema (an independent validator); enough walks must
finish. (2) Documents written here, valid per jsonschema and in the
grammar's canonical shape (schema property order), must be accepted by the
matcher (structured_walk --accept); documents listed as invalid must be
refused. Exits non-zero with a message on any mismatch.
"""
import json
import os
import subprocess
import sys
import tempfile

import jsonschema

WALKS = 200
MIN_FINISHED = 20

TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer", "minimum": -5, "maximum": 5},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 3},
            },
            "required": ["value"],
        }
    },
    "$ref": "#/$defs/node",
}

# (name, schema, documents that must be accepted, documents that must be refused)
CASES = [
    ("any", {}, ['{"a":[1,2.5e3,"x",null,true]}', '[]', '"s"', '-0.5', 'false'], ['{"a":1,}', '01', '[1,]']),
    ("true", True, ['{"k":{"k":{}}}', '3'], ['tru']),
    ("string", {"type": "string"}, ['"h\\u00e9llo \\n"', '"\u00e9\u4e2d\U0001F600"'], ['"\x01"', '"\\x"']),
    ("string_len", {"type": "string", "minLength": 2, "maxLength": 4},
     ['"ab"', '"\u00e9\u00e9\u00e9\u00e9"', '"a\\nb"'], ['"a"', '"abcde"', '"\U0001F600"']),
    ("integer", {"type": "integer"}, ['0', '-12', '1234567890123456789'], ['-0', '01', '1.0', '1e3']),
    ("integer_range", {"type": "integer", "minimum": 10, "maximum": 250}, ['10', '250', '99'], ['9', '251', '-10']),
    ("integer_negative", {"type": "integer", "minimum": -300, "exclusiveMaximum": -7},
     ['-300', '-8', '-99'], ['-7', '-301', '0', '5']),
    ("integer_exclusive", {"type": "integer", "exclusiveMinimum": 0, "maximum": 1000000}, ['1', '1000000'], ['0', '1000001']),
    ("number", {"type": "number"}, ['0', '-0.5', '1e10', '3.25E-2', '12.0'], ['.5', '1.', '1e', '+1', '00']),
    ("number_range", {"type": "number", "minimum": -1.5, "maximum": 2.25},
     ['-1.5', '2.25', '0.125', '-0', '2'], ['2.2501', '-1.6', '3', '1e0']),
    ("number_exclusive", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, ['0.5', '0.0001'], ['0', '1', '1.0']),
    ("boolean_null", {"type": ["boolean", "null"]}, ['true', 'false', 'null'], ['0', '"true"']),
    ("enum", {"enum": ["red", "gr\u00fcn", "\u7eff", 42, None, {"a": [1, {"b": "c"}]}, [True, "x"]]},
     ['"red"', '"gr\u00fcn"', '42', 'null', '{"a":[1,{"b":"c"}]}', '[true,"x"]'],
     ['"blue"', '{"a": [1,{"b":"c"}]}', '4']),
    ("const", {"const": {"k": "v\"q", "n": 1.5}}, ['{"k":"v\\"q","n":1.5}'], ['{"n":1.5,"k":"v\\"q"}']),
    ("enum_typed", {"type": "string", "enum": ["a", 1, "b"]}, ['"a"', '"b"'], ['1']),
    ("object", {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0},
            "name": {"type": "string", "maxLength": 20},
            "email": {"type": "string"},
            "active": {"type": "boolean"},
        },
        "required": ["id", "name"],
        "additionalProperties": False,
    }, ['{"id":1,"name":"x"}', '{"id":1,"name":"x","active":true}', '{ "id" : 3 , "name" : "y" , "email" : "e" }'],
       ['{"name":"x","id":1}', '{"id":1}', '{"id":1,"name":"x","zz":1}']),
    ("object_additional_true", {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "additionalProperties": True,
    }, ['{"a":"x","b":[1]}', '{"z":null}', '{}'], ['{"a":1}', '{"b":1,"a":"x"}']),
    ("object_additional_schema", {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": {"type": "integer", "maximum": 9},
    }, ['{"a":1,"x":3}', '{"a":1,"b":"s","y":9,"z":0}'], ['{"a":1,"x":10}', '{"a":1,"b":2}', '{"a":1,"x":1,"b":"s"}']),
    ("nested", {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 4},
                    "point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}], "items": False},
                },
                "required": ["tags"],
            },
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        },
        "required": ["user"],
    }, ['{"user":{"tags":["a"],"point":[1.5,2]},"matrix":[[1],[],[2,3]]}'],
       ['{"user":{"tags":[]}}', '{"user":{"tags":["a"],"point":[1,2,3]}}']),
    ("array_bounds", {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
     ['[1,2]', '[1, 2, 3]'], ['[1]', '[1,2,3,4]']),
    ("prefix_items", {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": {"type": "boolean"}},
     ['["a",1,true,false]', '["a"]', '[]'], ['[1]', '["a",1,2]']),
    ("anyof", {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "maximum": 5},
                         {"type": "object", "properties": {"k": {"const": 1}}, "required": ["k"]}]},
     ['"ab"', '5', '{"k":1}'], ['"abc"', '6', '{}']),
    ("oneof_disjoint", {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind", "x"]},
        {"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "string"}}, "required": ["kind"]},
        {"type": "null"}]},
     ['{"kind":"a","x":1}', '{"kind":"b"}', 'null'], ['{"kind":"a"}', '{"kind":"c"}']),
    ("tree", TREE, ['{"value":1,"children":[{"value":-5},{"value":2,"children":[]}]}'], ['{"value":6}']),
    ("definitions", {
        "definitions": {"item": {"type": "object", "properties": {"name": {"type": "string"},
                                                                   "price": {"type": "number", "minimum": 0}},
                                 "required": ["name", "price"]}},
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/definitions/item"}}},
        "required": ["items"],
    }, ['{"items":[{"name":"x","price":0.5}]}'], ['{"items":[{"name":"x","price":-1}]}']),
    ("recursive_root", {"type": "object", "properties": {"next": {"$ref": "#"}, "v": {"enum": [1, 2]}},
                        "required": ["v"]},
     ['{"next":{"v":2},"v":1}'], ['{"next":{},"v":1}']),
    ("nullable_ref", {"$defs": {"s": {"type": "string", "minLength": 1}},
                      "type": "object",
                      "properties": {"a": {"anyOf": [{"$ref": "#/$defs/s"}, {"type": "null"}]}},
                      "required": ["a"]},
     ['{"a":null}', '{"a":"x"}'], ['{"a":""}']),
    ("untyped_keywords", {"minLength": 3, "maximum": 5, "items": {"type": "null"}},
     ['"abc"', '5', '[null]', '{}', 'true'], ['"ab"', '6', '[1]']),
]


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: jsonschema_check.py PATH/TO/structured_walk")
    walker = sys.argv[1]
    total_docs = 0
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, schema, good, bad) in enumerate(CASES):
            path = os.path.join(tmp, name + ".json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(schema, f, ensure_ascii=False)
            validator = jsonschema.Draft202012Validator(schema)
            # (1) Generated documents validate.
            run = subprocess.run([walker, path, str(WALKS), str(1000 + index)], capture_output=True, timeout=300)
            if run.returncode != 0:
                fail(f"{name}: structured_walk exited {run.returncode}: {run.stderr.decode(errors='replace')}")
            docs = [json.loads(line) for line in run.stdout.decode("utf-8").split("\n") if line]
            if len(docs) < MIN_FINISHED:
                fail(f"{name}: only {len(docs)} of {WALKS} walks finished")
            for doc in docs:
                try:
                    value = json.loads(doc)
                except ValueError as e:
                    fail(f"{name}: generated text is not JSON ({e}): {doc!r}")
                errors = list(validator.iter_errors(value))
                if errors:
                    fail(f"{name}: generated document does not validate: {doc!r}: {errors[0].message}")
            total_docs += len(docs)
            # (2) Hand-written documents: the matcher agrees with jsonschema.
            for doc in good:
                if list(validator.iter_errors(json.loads(doc))):
                    fail(f"{name}: test document {doc!r} is not valid per jsonschema (fix the test)")
            lines = good + bad
            run = subprocess.run([walker, "--accept", path], input="\n".join(lines).encode("utf-8") + b"\n",
                                 capture_output=True, timeout=60)
            if run.returncode != 0:
                fail(f"{name}: structured_walk --accept exited {run.returncode}: {run.stderr.decode(errors='replace')}")
            verdicts = run.stdout.decode().split()
            for doc, verdict in zip(lines, verdicts):
                want = "1" if doc in good else "0"
                if verdict != want:
                    fail(f"{name}: matcher {'accepted' if verdict == '1' else 'refused'} {doc!r}")
            if len(verdicts) != len(lines):
                fail(f"{name}: expected {len(lines)} verdicts, got {len(verdicts)}")
    print(f"OK: {len(CASES)} schemas, {total_docs} generated documents validated by jsonschema")


if __name__ == "__main__":
    main()
