"""Every default and fixed limit of the sidecar, declared once.

A tiny module with no imports, so that the sandbox (whose launcher runs `python -S` and must stay
light), the settings, the gunicorn configuration and the HTTP schema can all read the same values.
"""

BIND = "127.0.0.1:9464"
WORKERS = 2
THREADS = 8
#: The history's directory as root; other users get `$XDG_STATE_HOME/sidecar` (never the working directory).
DATA_DIR_ROOT = "/var/lib/sidecar"
LOG_LEVEL = "INFO"

#: Per-run timeout when neither a plugin, a check nor the call sets one.
DEFAULT_TIMEOUT_SECONDS = 60.0
#: Upper bound a plugin, a check or a call may ask for.
MAX_TIMEOUT_SECONDS = 300.0
#: Per-run memory limit (address space).
DEFAULT_MEMORY_LIMIT_MB = 1024
DEFAULT_MAX_RESULT_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
#: Per-plugin templates (a process that imported the plugin once and forks its runs): on, and how many.
TEMPLATES = "on"
MAX_TEMPLATES = 32
HISTORY_RETENTION = 1000
#: Processes one run may hold at once (its cgroup's pids.max; RLIMIT_NPROC of its uid as root).
MAX_PROCESSES = 512

#: The form of every plugin and check name: a metric label value and a URL path segment.
PLUGIN_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"

#: How long the runner waits for the sandbox launcher to answer (a ticket, a run's exit report, the watchdog's
#: ping) before it declares it stalled and replaces it (its runs in flight end with it).
LAUNCHER_ANSWER_SECONDS = 3.0
#: The watchdog pings each launcher this often; `/readyz` reports one whose ping is older than this.
LAUNCHER_PING_SECONDS = 1.0
#: Past a run's deadline, how long the runner waits for the launcher to end it before killing it itself.
RUN_BACKSTOP_SECONDS = 1.0
