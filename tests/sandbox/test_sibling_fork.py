"""A template's run is forked as the launcher's child in one fork (`sidecar.sandbox.sibling_fork`).

Each case runs in a fresh interpreter: P (a child subreaper, standing in for the launcher) forks Q (the
template), and Q forks the run through `template._fork_run`. P must then be the run's parent, whichever
way Q forked it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from sidecar.sandbox import sibling_fork

SCRIPT = textwrap.dedent('''
    import ctypes, json, os, sys
    from sidecar.sandbox import sibling_fork, template
    if sys.argv[1] == "refused":
        sibling_fork._works = False  # as where the kernel refuses clone3
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER, as the launcher
    launcher = os.getpid()
    hooked = os.pipe()
    report_r, report_w = os.pipe()
    res, out, err, req = (os.pipe() for _ in range(4))
    q = os.fork()
    if q == 0:  # the template: holds the run's ends only, as a real one does
        for fd in (res[0], out[0], err[0], req[1], report_r, hooked[0]):
            os.close(fd)
        os.register_at_fork(after_in_child=lambda: os.write(hooked[1], b"h"))
        pid = template._fork_run([res[1], out[1], err[1], req[0]], "/tmp", None, None, launcher, "x")
        try:
            os.wait()
            children = "some"
        except ChildProcessError:
            children = "none"
        os.write(report_w, json.dumps({"run": pid, "template_children": children,
                                      "sibling": sibling_fork.supported()}).encode())
        os._exit(0)
    os.waitpid(q, 0)
    report = json.loads(os.read(report_r, 4096))
    os.close(req[1])  # no request: the run leaves at once
    pid, status = os.waitpid(report["run"], 0)  # ChildProcessError unless the run is our child
    report["status"] = os.waitstatus_to_exitcode(status)
    os.set_blocking(hooked[0], False)
    report["hooks"] = os.read(hooked[0], 16).decode()
    print(json.dumps(report))
''')


def _scenario(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=30,
                         check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_a_templates_run_is_the_launchers_child_from_birth() -> None:
    report = _scenario("sibling")
    if not report["sibling"]:
        pytest.skip("clone3(CLONE_PARENT) is refused here: the fallback is what runs")
    assert report["template_children"] == "none"  # no middle process: the template never had a child
    assert report["status"] == 0  # reaped by the stand-in launcher: its child
    assert report["hooks"] == "h"  # Python's after-fork hooks ran in the run, as under os.fork


def test_where_the_kernel_refuses_the_run_is_forked_twice_and_still_the_launchers() -> None:
    report = _scenario("refused")
    assert report["sibling"] is False
    assert report["status"] == 0  # re-parented to the subreaper once the middle process left
    assert report["hooks"] == "hh"  # the middle process and the run


def test_a_refused_kernel_is_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sibling_fork, "_works", False)
    assert sibling_fork.fork_sibling() is None
    assert not sibling_fork.supported()
