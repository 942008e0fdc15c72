#!/usr/bin/env bash
# Set up (first time) and run the sidecar: SQLite history in ./.sidecar, built-in plugins, bound to
# 127.0.0.1:9464. Without a configuration (SIDECAR_CONFIG or --config), it runs the quick-start checks of
# examples/sidecar.toml: the sidecar's own /healthz over HTTP, its port over TCP, and the root disk.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
config=(--config examples/sidecar.toml)
if [[ -n "${SIDECAR_CONFIG:-}" ]]; then
    config=()
fi
for arg in "$@"; do
    if [[ "$arg" == --config || "$arg" == --config=* ]]; then
        config=()
    fi
done
exec .venv/bin/sidecar serve "${config[@]}" "$@"
