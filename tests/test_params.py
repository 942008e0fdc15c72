"""The one rule for parameters given as text: JSON as a run body would decode it, else the text itself."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import schema
from sidecar.params import parse_value


@pytest.mark.parametrize(("raw", "value"), [
    ("3", 3), ("0.5", 0.5), ("true", True), ("null", None), ("[1,2]", [1, 2]), ('{"a": 1}', {"a": 1}),
    ('"NaN"', "NaN"), ("text", "text"), ("", ""), ("1" + "0" * 400, 10**400),
])
def test_json_values_and_plain_text(raw: str, value: Any) -> None:
    assert parse_value(raw) == value


@pytest.mark.parametrize(("raw", "needle"), [
    ("NaN", "'NaN' is invalid: NaN is not a JSON number"),
    ("Infinity", "'Infinity' is invalid: Infinity is not a JSON number"),
    ("-Infinity", "'-Infinity' is invalid: -Infinity is not a JSON number"),
    ("[1, NaN]", "'[1, NaN]' is invalid: NaN is not a JSON number"),
    ("1e400", "'1e400' is invalid: number out of range"),
    ('{"a": -1e999}', "number out of range"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_numbers_a_body_could_not_carry_are_the_callers_error(raw: str, needle: str) -> None:
    """Python's json reads NaN, Infinity and 1e400 as floats; a run body refuses them, and so does a param."""
    with pytest.raises(schema.Invalid, match=needle.replace("[", r"\[")):
        parse_value(raw)
