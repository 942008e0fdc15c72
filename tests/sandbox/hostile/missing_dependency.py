import sidecar_no_such_module_xyz  # noqa: F401


def run():
    return 1
