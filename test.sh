#!/usr/bin/env bash
# Set up (first time) and run the whole suite: ruff, mypy, pytest (unit + integration).
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh "test,dev"

# apt_install WHAT PACKAGE...: install Debian packages when root with apt-get (one `apt-get update` per
# run); fails when it cannot, so each caller says what that costs.
apt_updated=""
apt_install() {
    local what=$1
    shift
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    echo "test.sh: installing Debian's $* ($what)" >&2
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The integration tests need a real Prometheus and promtool (Debian package `prometheus`);
# the Alertmanager config is checked with amtool (`prometheus-alertmanager`).
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v amtool >/dev/null; then
    apt_install "integration tests" prometheus prometheus-alertmanager || {
        echo "test.sh: prometheus/promtool/amtool missing and cannot apt-get install them" >&2
        exit 1
    }
fi

# The status page is rendered in headless Chromium (Debian package `chromium`); without it (and without root
# to install it) that test is skipped, except under CI.
if ! command -v chromium >/dev/null; then
    apt_install "status-page browser test" chromium ||
        echo "test.sh: chromium missing and cannot apt-get install it; the status-page browser test will skip" >&2
fi

# The isolation tests need bubblewrap (Debian package `bubblewrap`): strict mode depends on it.
if ! command -v bwrap >/dev/null; then
    apt_install "isolation tests" bubblewrap ||
        echo "test.sh: bubblewrap (bwrap) missing: the isolation tests will be skipped" >&2
fi

# The `nagios` built-in is tested with Debian's monitoring plugins (`monitoring-plugins-basic`): check_disk,
# check_procs, check_http, ... Without them those tests skip, except under CI, where they fail.
if [ ! -x /usr/lib/nagios/plugins/check_dummy ]; then
    apt_install "nagios built-in tests" monitoring-plugins-basic ||
        echo "test.sh: monitoring-plugins-basic missing and cannot apt-get install it; the nagios tests will skip" >&2
fi

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
