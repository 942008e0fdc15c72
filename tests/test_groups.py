"""Groups a run may take: resolved once, refused when absent or when the sidecar cannot give them."""

from __future__ import annotations

import grp
import os

import pytest

from sidecar.groups import gid_of, resolve

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give runs groups")


def test_a_group_is_named_or_numbered() -> None:
    adm = grp.getgrnam("adm").gr_gid
    assert gid_of("adm") == gid_of(adm) == gid_of(str(adm)) == adm


def test_an_absent_group_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="there is no group 'no-such-group' on this host"):
        gid_of("no-such-group")
    with pytest.raises(ValueError, match="there is no group 3999999999"):
        gid_of(3999999999)


@needs_root
def test_resolve_gives_the_primary_and_the_supplementary_gids() -> None:
    adm = grp.getgrnam("adm").gr_gid
    assert resolve(None) == (None, ())
    assert resolve("adm", ["adm", adm]) == (adm, (adm,))


def test_only_root_gives_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert resolve(None, []) == (None, ())  # no groups: nothing to give
    with pytest.raises(ValueError, match="only a sidecar running as root can give its runs groups"):
        resolve(None, ["adm"])
