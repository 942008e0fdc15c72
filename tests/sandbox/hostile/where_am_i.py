"""Reports its cgroups at import and at run time (a run's code must never run outside its unit)."""

with open("/proc/self/cgroup") as f:
    AT_IMPORT = f.read()


def run():
    with open("/proc/self/cgroup") as f:
        return {"at_import": AT_IMPORT, "at_run": f.read()}
