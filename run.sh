#!/usr/bin/env bash
# Set up (first time) and run the sidecar with its embedded defaults:
# SQLite history in ./.sidecar, built-in plugins, bound to 127.0.0.1:9464.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/sidecar serve "$@"
