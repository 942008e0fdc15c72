"""The one schema: hostile JSON never crashes the decoder, and errors name the key and the value."""

from __future__ import annotations

import pytest

from sidecar import schema


@pytest.mark.parametrize(("raw", "needle"), [
    (b'{"params": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "nested too deeply"),
    (b'{"params": {"a": 1' + b"0" * 5000 + b"}}", "out of range"),
    (b'{"timeout_seconds": 1' + b"0" * 400 + b"}", "timeout_seconds = "),
    (b'{"timeout_seconds": -1}', "timeout_seconds = -1 is invalid: expected a number > 0"),
    (b'{"timeout_seconds": true}', "timeout_seconds = True is invalid"),
    (b'{"params": {"1": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}}", "nested more than 32 deep"),
    (b"\xff", "not valid JSON"),
])
def test_hostile_bodies_are_invalid_not_crashes(raw: bytes, needle: str) -> None:
    with pytest.raises(schema.Invalid, match=needle):
        schema.decode_json(raw, schema.RunBody)


def test_depth_is_iterative_and_stops_early() -> None:
    deep: list[object] = []
    node = deep
    for _ in range(100_000):
        child: list[object] = []
        node.append(child)
        node = child
    assert schema.depth(deep, 32) == 33
    assert schema.depth({"a": [1, {"b": 2}]}, 32) == 3
    assert schema.depth(5, 32) == 0


def test_params_at_the_depth_limit_are_accepted() -> None:
    raw = b'{"params": ' + b'{"a": ' * 32 + b"1" + b"}" * 32 + b"}"
    assert schema.decode_json(raw, schema.RunBody).params is not None


def test_metadata_and_check_share_their_limit_fields() -> None:
    shared = set(schema.Limits.__struct_fields__)
    assert shared <= set(schema.PluginMetadata.__struct_fields__)
    assert shared <= set(schema.CheckTable.__struct_fields__)


def test_json_schema_is_inlined() -> None:
    doc = schema.json_schema(schema.RunBody)
    assert "$ref" not in str(doc) and doc["additionalProperties"] is False


def test_a_huge_bad_value_is_cut_in_the_message() -> None:
    raw = b'{"params": "' + b"x" * 100_000 + b'"}'
    with pytest.raises(schema.Invalid) as caught:
        schema.decode_json(raw, schema.RunBody)
    assert len(str(caught.value)) < 300 and "characters)" in str(caught.value)


@pytest.mark.parametrize("name", ["echo\n", "Echo", "", "a" * 65, "echo\nx", "ech o"])
def test_names_are_matched_whole(name: str) -> None:
    """`$` matches before a final newline and msgspec's `pattern` searches: the check is `fullmatch`."""
    assert not schema.is_name(name)
    with pytest.raises(schema.Invalid, match="plugin = .* is invalid"):
        schema.convert({"plugin": name}, schema.CheckTable)


def test_good_names_pass() -> None:
    assert schema.is_name("echo") and schema.is_name("a" * 64) and schema.is_name("disk_usage2")
    assert schema.convert({"plugin": "echo"}, schema.CheckTable).plugin == "echo"
