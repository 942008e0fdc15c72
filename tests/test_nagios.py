"""Monitoring-plugins output: every perfdata form of the guidelines, as a table of strings and what they give."""

from __future__ import annotations

import math

import pytest

from sidecar.nagios import Perfdata, Range, parse_output, parse_perfdata, parse_range, state_of

INF = math.inf
MIB = 1024.0**2


@pytest.mark.parametrize(("code", "state"), [(0, "ok"), (1, "warning"), (2, "critical"), (3, "unknown"),
                                             (4, "unknown"), (127, "unknown"), (-9, "unknown")])
def test_exit_codes_are_states(code: int, state: str) -> None:
    got, note = state_of(code)
    assert got == state
    assert (note is None) == (0 <= code <= 3)
    if note:
        assert str(code) in note


@pytest.mark.parametrize(("text", "expected"), [
    ("10", Range(0, 10)),
    ("10:", Range(10, INF)),
    ("~:10", Range(-INF, 10)),
    ("10:20", Range(10, 20)),
    ("@10:20", Range(10, 20, inside=True)),
    ("@5", Range(0, 5, inside=True)),
    (":7", Range(0, 7)),
    ("-5:-1", Range(-5, -1)),
    ("1e3", Range(0, 1000)),
    ("", None), ("@", None), ("20:10", None), ("abc", None), ("10:x", None), ("~", None),
])  # fmt: skip
def test_ranges(text: str, expected: Range | None) -> None:
    assert parse_range(text) == expected


def test_range_semantics() -> None:
    assert Range(0, 10).alerts(11) and Range(0, 10).alerts(-1) and not Range(0, 10).alerts(10)
    assert Range(10, 20, inside=True).alerts(15) and not Range(10, 20, inside=True).alerts(21)


P = Perfdata


@pytest.mark.parametrize(("text", "items", "invalid"), [
    ("time=0.5s", [P("time", 0.5, "seconds")], 0),
    ("time=250ms;500;1000;0", [P("time", 0.25, "seconds", warning=Range(0, 0.5), critical=Range(0, 1.0), min=0.0)],
     0),
    ("rt=1500us", [P("rt", 0.0015, "seconds")], 0),
    ("/=2643MB;5948;5958;0;5968",
     [P("/", 2643 * MIB, "bytes", warning=Range(0, 5948 * MIB), critical=Range(0, 5958 * MIB), min=0.0,
        max=5968 * MIB)], 0),
    ("size=10B size2=2KB big=1GB huge=1TB",
     [P("size", 10.0, "bytes"), P("size2", 2048.0, "bytes"), P("big", 1024.0**3, "bytes"),
      P("huge", 1024.0**4, "bytes")], 0),
    ("used=56%;80;90;0;100", [P("used", 56.0, "percent", warning=Range(0, 80), critical=Range(0, 90), min=0.0,
                                max=100.0)], 0),
    ("packets=1234c", [P("packets", 1234.0, "total", counter=True)], 0),
    ("load1=0.150;5.000;10.000;0; load5=0.080;4.000;6.000;0;",
     [P("load1", 0.15, "", warning=Range(0, 5), critical=Range(0, 10), min=0.0),
      P("load5", 0.08, "", warning=Range(0, 4), critical=Range(0, 6), min=0.0)], 0),
    ("'label with spaces'=3", [P("label with spaces", 3.0, "")], 0),
    ("'it''s'=4;;;;", [P("it's", 4.0, "")], 0),
    ("x=U;1;2", [P("x", None, "", warning=Range(0, 1), critical=Range(0, 2))], 0),
    ("procs=3;~:5;@10:20", [P("procs", 3.0, "", warning=Range(-INF, 5), critical=Range(10, 20, inside=True))], 0),
    ("a=1;10:;;", [P("a", 1.0, "", warning=Range(10, INF))], 0),
    ("a=1 b=oops c=2", [P("a", 1.0, ""), P("c", 2.0, "")], 1),
    ("a=1furlongs b=2", [P("b", 2.0, "")], 1),
    ("noequals b=2", [P("b", 2.0, "")], 1),
    ("a=1;x;;", [], 1),
    ("a=1;1;2;3;4;5", [], 1),
    ("a=1;;;zero", [], 1),
    ("=5", [], 1),
    ("'unclosed=5 b=6", [], 1),
    ("a=1e400", [], 1),
    ("", [], 0),
])  # fmt: skip
def test_perfdata(text: str, items: list[Perfdata], invalid: int) -> None:
    assert parse_perfdata(text) == (items, invalid)


def test_output_with_long_text_and_perfdata_on_several_lines() -> None:
    out = parse_output(0, "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n"
                          "/ 15272 MB (77%);\n"
                          "/boot 68 MB (69%); | /boot=68MB;88;93;0;98\n"
                          "/home=69357MB;253404;253409;0;253414\n")
    assert (out.state, out.message) == ("ok", "DISK OK - free space: / 3326 MB (56%);")
    assert out.long_output == "/ 15272 MB (77%);\n/boot 68 MB (69%);"
    assert [p.label for p in out.perfdata] == ["/", "/boot", "/home"]
    assert out.perfdata[2].value == 69357 * MIB and out.invalid == 0


def test_output_without_perfdata_or_text() -> None:
    out = parse_output(2, "CRITICAL - socket timeout\nlong line one\nlong line two\n")
    assert (out.state, out.message, out.long_output, out.perfdata) == (
        "critical", "CRITICAL - socket timeout", "long line one\nlong line two", ())
    empty = parse_output(3, "")
    assert empty.state == "unknown" and "no output" in empty.message
    odd = parse_output(7, "weird | x=1")
    assert odd.state == "unknown" and "exit code 7" in odd.message and odd.perfdata == (P("x", 1.0, ""),)
