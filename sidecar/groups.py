"""The groups a run may take, named in the configuration and resolved to gids once, where it is read.

As root each run takes a uid of its own and, by default, a gid of its own and no other group: it reads
what any user may read. The operator may grant a check's runs groups (`groups = ["adm"]` to read
`/var/log`) rather than open the files to everyone; the uid stays the run's own, so runs still cannot
signal or trace one another. Only a root sidecar can give groups: elsewhere they are refused at start.
"""

from __future__ import annotations

import functools
import grp
import os
from collections.abc import Iterable

__all__ = ["GroupRef", "gid_of", "resolve", "resolve_cached"]

#: A group as the configuration names it: its name, or its number.
GroupRef = str | int


def gid_of(ref: GroupRef) -> int:
    """The gid of a group of this host; ValueError naming it when the host has no such group."""
    try:
        if isinstance(ref, int) or ref.isdigit():
            return grp.getgrgid(int(ref)).gr_gid
        return grp.getgrnam(ref).gr_gid
    except (KeyError, OverflowError):
        raise ValueError(f"there is no group {ref!r} on this host") from None


def resolve(group: GroupRef | None, groups: Iterable[GroupRef] = ()) -> tuple[int | None, tuple[int, ...]]:
    """(primary gid or None, supplementary gids); ValueError saying why the groups cannot be given."""
    groups = tuple(groups)
    if group is None and not groups:
        return None, ()
    if os.geteuid() != 0:
        raise ValueError(f"only a sidecar running as root can give its runs groups (this one runs as uid "
                         f"{os.geteuid()}, and its runs share it)")
    return (None if group is None else gid_of(group)), tuple(sorted({gid_of(g) for g in groups}))


@functools.cache
def resolve_cached(group: GroupRef | None, groups: tuple[GroupRef, ...]) -> tuple[int | None, tuple[int, ...]]:
    """`resolve` for every run (the settings' defaults): validated at start already, so looked up once."""
    return resolve(group, groups)
