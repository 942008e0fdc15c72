"""Sandbox processes say what they are in `ps`: the launcher, a template of PLUGIN, a run of PLUGIN."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox

from ..conftest import poll

OWN_TITLE = '''
def run():
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read().split(b"\\0")[0].decode()
    with open("/proc/self/comm") as f:
        return {"cmdline": cmdline, "comm": f.read().strip()}
'''


@pytest.mark.parametrize("templates", [True, False], ids=["templates", "per-run-import"])
def test_launcher_templates_and_runs_show_what_they_are(tmp_path: Path, templates: bool) -> None:
    (tmp_path / "titled.py").write_text(OWN_TITLE)
    with Sandbox(templates=templates) as sandbox:
        result = sandbox.run(RunRequest(PluginRef("titled", path=str(tmp_path / "titled.py"))))
        assert result.ok, result.error
        assert result.result == {"cmdline": "sidecar: run of titled", "comm": "sidecar: run of"}  # comm: 15 bytes
        launcher = psutil.Process(sandbox.launcher_pid)
        assert launcher.cmdline()[0] == "sidecar: launcher"
        wanted = {"sidecar: spare", *(["sidecar: template of titled"] if templates else [])}
        if templates:  # the template's own spare, forked ahead for the plugin's next run
            wanted.add("sidecar: spare of titled")

        def titles() -> tuple[bool, set[str]]:
            seen: set[str] = set()
            for child in launcher.children():
                try:
                    seen.update(child.cmdline()[:1])
                except psutil.Error:  # a retired spare, exiting
                    continue
            return wanted <= seen, seen

        # The next spare is forked after the run, while nobody waits: it names itself a moment later.
        poll("a spare (and the plugin's template) named in ps", titles, timeout=10.0, every=0.02)


def _comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()


def test_a_title_without_setproctitle_changes_the_short_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.sandbox import title

    monkeypatch.setattr(title, "_extension", lambda: None)
    monkeypatch.setattr(title, "_setter", None)
    before = _comm()
    try:
        title.set_title("sidecar: run of a_long_plugin_name")
        assert _comm() == "sidecar: run of"  # the kernel keeps 15 bytes
    finally:
        title.set_title(before)  # this test process's own name back
