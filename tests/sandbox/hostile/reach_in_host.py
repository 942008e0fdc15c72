"""reach_in with the host's processes in view (`host_processes = True`, as process_check has)."""

from reach_in import run  # noqa: F401 - the plugin's directory is on sys.path when it is loaded

host_processes = True
