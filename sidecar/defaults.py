"""Every default and fixed limit of the sidecar, declared once.

A tiny module with no imports, so that the sandbox (whose launcher runs `python -S` and must stay
light), the settings, the gunicorn configuration and the HTTP schema can all read the same values.
"""

BIND = "127.0.0.1:9464"
#: One gevent worker serves a sidecar (a connection costs a greenlet; runs and scrapes are the runner's work):
#: a second costs ~25 MiB PSS for no measured gain (benchmarks.load_bench --workers 1 2).
WORKERS = 1
THREADS = 8
#: The history's directory as root; other users get `$XDG_STATE_HOME/sidecar` (never the working directory).
DATA_DIR_ROOT = "/var/lib/sidecar"
LOG_LEVEL = "INFO"
#: Connections one HTTP worker holds at once (its gevent pool). Taking the last slot closes the connection
#: that has waited for a request the longest, so idle clients can never keep a request out.
WORKER_CONNECTIONS = 1000
#: Seconds a connection may take to send a request's line and headers, the first request and each
#: keep-alive one alike; then the server closes it.
IDLE_TIMEOUT_SECONDS = 5

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

#: On SIGTERM, how long runs in flight may finish (their callers get their answers) before the sidecar ends
#: the rest as `aborted`; gunicorn's graceful timeout and a supervisor's kill timeout must exceed it.
STOP_GRACE_SECONDS = 10.0

#: Longest a run or a route waits on the history store (a frozen or hung disk): beyond it the run is
#: answered with its write kept pending, and a route that reads the history answers 503.
STORE_DEADLINE_SECONDS = 2.0

#: The relay from HTTP workers to the runner. Each worker may hold `max_concurrent_runs` + this many connections
#: to the runner at once (room for reads while every slot runs); a call beyond waits for one, then 503 `saturated`.
RUNNER_SPARE_CONNECTIONS = 8
#: Connections a worker keeps open to the runner between calls; the rest are closed as a burst ends.
RUNNER_IDLE_CONNECTIONS = 4
#: Seconds a call waits for a connection to the runner (a free one of its worker's, or the runner's accept).
RUNNER_WAIT_SECONDS = 5.0
#: Seconds a worker waits for the runner's reply beyond the longest run (`max_timeout_seconds`); then 503.
RUNNER_REPLY_MARGIN_SECONDS = 30.0

#: The form of every plugin and check name: a metric label value and a URL path segment.
PLUGIN_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"

#: The environment variable through which `sidecar serve` hands its gunicorn workers their configuration
#: (the runner's socket, the bind, the limits they enforce): read by the gunicorn config and the app.
WORKER_ENV = "SIDECAR_WORKER_CONFIG"

#: What plugins report (`sidecar.check`): series one plugin or check may export (its own gauges plus the
#: numeric fields of its result), the most any run may send, and the bounds of one reported series.
MAX_PLUGIN_SERIES = 100
MAX_PLUGIN_SERIES_CEILING = 10_000
MAX_METRIC_NAME_CHARS = 128
MAX_HELP_CHARS = 512
MAX_LABELS = 8
MAX_LABEL_NAME_CHARS = 64
MAX_LABEL_VALUE_CHARS = 128
MAX_STATE_REASON_CHARS = 1000
#: Output of a monitoring-plugins executable (the `nagios` built-in) kept per run; the rest is read and dropped.
NAGIOS_MAX_OUTPUT_BYTES = 64 * 1024

#: How long the runner waits for the sandbox launcher to answer (a ticket, a run's exit report, the watchdog's
#: ping) before it declares it stalled and replaces it (its runs in flight end with it).
LAUNCHER_ANSWER_SECONDS = 3.0
#: The watchdog pings each launcher this often; `/readyz` reports one whose ping is older than this.
LAUNCHER_PING_SECONDS = 1.0
#: Past a run's deadline, how long the runner waits for the launcher to end it before killing it itself.
RUN_BACKSTOP_SECONDS = 1.0
