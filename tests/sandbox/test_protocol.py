"""The sandbox's wire protocol (`sidecar.sandbox.protocol`): what a forged packet or frame becomes."""

from __future__ import annotations

import json

import pytest

from sidecar.sandbox.protocol import ProtocolError, result_message, template_message


@pytest.mark.parametrize("msg", [
    {"t": "ready", "origin": "/plugins/p.py"},
    {"t": "ready", "origin": None},
    {"t": "failed", "message": {"outcome": "import", "error": {"type": "E", "message": "", "traceback": None}}},
    {"t": "threads", "count": 3},
    {"t": "forked", "pid": 0},
    {"t": "forked", "pid": 4242},
])
def test_a_templates_messages_pass_as_sent(msg: dict[str, object]) -> None:
    assert template_message(json.dumps(msg).encode()) == msg


def test_a_template_message_of_an_unknown_kind_is_ignored() -> None:
    assert template_message(b'{"t": "hello"}') is None


@pytest.mark.parametrize("data", [
    b"not json",
    b"[1, 2]",
    b'{"t": "forked"}',
    b'{"t": "forked", "pid": true}',  # a bool is an int to Python: pid 1 is not what a template forked
    b'{"t": "forked", "pid": -1}',
    b'{"t": "forked", "pid": "12"}',
    b'{"t": "ready", "origin": 5}',  # an int would be stat()ed as an fd
    b'{"t": "failed", "message": "text"}',
    b'{"t": "threads", "count": "many"}',
    b"[" * 100_000 + b"]" * 100_000,
])
def test_a_forged_template_message_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        template_message(data)


def test_a_result_frame_needs_a_known_outcome() -> None:
    assert result_message(b'{"outcome": "success", "result": 1}') == {"outcome": "success", "result": 1}
    for forged in (b'{"outcome": "great"}', b'["success"]', b"{", b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(ProtocolError):
            result_message(forged)


def test_a_template_key_is_the_same_on_both_sides_whatever_the_order_of_the_plugins_fields() -> None:
    from sidecar.sandbox.protocol import PluginWire, template_key

    plugin: PluginWire = {"name": "p", "path": "/plugins/p.py", "module": None, "attr": "run"}
    shuffled: PluginWire = {"attr": "run", "module": None, "path": "/plugins/p.py", "name": "p"}
    assert template_key(plugin, None, 256, None) == template_key(shuffled, None, 256, None)
    assert template_key(plugin, None, 256, None) != template_key(plugin, None, 512, None)  # another template
