#!/usr/bin/env bash
# Set up (first time) and run the whole suite: ruff, mypy, pytest (unit + integration).
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh "test,dev"

# The integration tests need a real Prometheus and promtool (Debian package `prometheus`);
# the Alertmanager config is checked with amtool (`prometheus-alertmanager`).
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v amtool >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing Debian's prometheus and prometheus-alertmanager packages" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus prometheus-alertmanager >/dev/null
    else
        echo "test.sh: prometheus/promtool/amtool missing and cannot apt-get install them" >&2
        exit 1
    fi
fi

# The status page is rendered in headless Chromium (Debian package `chromium`); without it (and without root
# to install it) that test is skipped, except under CI.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing Debian's chromium package" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "test.sh: chromium missing and cannot apt-get install it; the status-page browser test will skip" >&2
    fi
fi

# The isolation tests need bubblewrap (Debian package `bubblewrap`): strict mode depends on it.
if ! command -v bwrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing Debian's bubblewrap package" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null
    else
        echo "test.sh: bubblewrap (bwrap) missing: the isolation tests will be skipped" >&2
    fi
fi

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
