"""bubblewrap's arguments, decided from paths and modes alone (no process started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import ConfigError
from sidecar.sandbox.isolation import Confinement, Isolation, bwrap_command, require_available


def _pairs(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == option]


def test_default_mode_binds_the_system_and_covers_the_secrets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    token = tmp_path / "token"
    token.write_text("t")
    args = bwrap_command("bwrap", Confinement(), [], [str(data), str(token), str(tmp_path / "missing")], True)
    assert args[:4] == ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts"] and args[-1] == "--"
    assert "--unshare-net" not in args and "--unshare-user" not in args
    assert args[args.index("--bind") + 1 : args.index("--bind") + 3] == ["/", "/"]
    assert str(data) in _pairs(args, "--tmpfs")
    assert args[args.index(str(token)) - 1] == "/dev/null"  # --ro-bind /dev/null TOKEN
    assert str(tmp_path / "missing") not in args


def test_strict_mode_is_read_only_and_offline_unless_asked() -> None:
    offline = bwrap_command("bwrap", Confinement(strict=True, network=False), [], [], True)
    assert "--unshare-net" in offline and "--bind" not in offline
    assert offline[offline.index("--ro-bind") + 1 : offline.index("--ro-bind") + 3] == ["/", "/"]
    assert "--unshare-net" not in bwrap_command("bwrap", Confinement(strict=True, network=True), [], [], True)


def test_a_closed_ancestor_is_covered_and_what_is_needed_bound_back(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    needed = closed / "deep" / "lib"
    needed.mkdir(parents=True)
    closed.chmod(0o700)
    outside = Path("/usr")
    args = bwrap_command("bwrap", Confinement(), [str(needed), str(outside)], [], True)
    # under the private /tmp already: bound back, with traversable parents made first
    assert str(needed) in _pairs(args, "--ro-bind")
    assert str(closed / "deep") in _pairs(args, "--dir")
    assert args.index(str(closed / "deep")) < args.index(str(needed))
    assert str(outside) not in args  # visible already through the system bind


def test_unprivileged_sidecars_get_a_user_namespace() -> None:
    assert "--unshare-user" in bwrap_command("bwrap", Confinement(), [], [], as_root=False)


def test_a_run_takes_its_checks_mode_and_network_only_matters_in_strict() -> None:
    iso = Isolation("default", bwrap="bwrap")
    assert iso.confinement() == Confinement(strict=False, network=True)
    assert iso.confinement("strict") == Confinement(strict=True, network=False)
    assert iso.confinement("strict", network=True) == Confinement(strict=True, network=True)
    assert Isolation("strict", bwrap="bwrap").confinement("default") == Confinement(strict=False, network=True)


def test_strict_without_bubblewrap_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="bubblewrap"):
        require_available("strict")
    require_available("default")
    with pytest.raises(ConfigError, match="isolation must be"):
        Isolation("off")


def test_host_processes_keeps_the_hosts_proc_and_as_root_its_pid_namespace() -> None:
    """As root the run's own uid keeps its signals in, and `ps` needs its pid to be the host's; not as root
    the PID namespace is what keeps them in."""
    args = bwrap_command("bwrap", Confinement(host_processes=True), [], [], True)
    assert "--proc" not in args and "--unshare-pid" not in args
    args = bwrap_command("bwrap", Confinement(host_processes=True), [], [], False)
    assert "--proc" not in args and "--unshare-pid" in args
    assert {"--proc", "--unshare-pid"} <= set(bwrap_command("bwrap", Confinement(), [], [], True))


def test_a_granted_path_is_bound_read_only_over_the_private_tmp(tmp_path: Path) -> None:
    logs = tmp_path / "app-logs"
    logs.mkdir()
    args = bwrap_command("bwrap", Confinement(read_paths=(str(logs),)), [], [], True)
    assert str(logs) in _pairs(args, "--ro-bind")
    assert args.index(str(logs)) > args.index("/tmp")  # after the private /tmp, so it shows through
    assert str(logs) not in bwrap_command("bwrap", Confinement(), [], [], True)


def test_runs_with_other_groups_or_paths_get_another_launcher() -> None:
    iso = Isolation()
    plain = iso.confinement()
    assert plain == Confinement()  # the default path keeps its one launcher
    assert iso.confinement(groups=(4, 4)) == iso.confinement(groups=(4,)) != plain
    assert iso.confinement(group=4) != plain
    assert iso.confinement(read_paths=("/srv/logs",)) != plain
