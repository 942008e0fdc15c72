#!/usr/bin/env bash
# Set up (first time) and run the sidecar: built-in plugins, bound to 127.0.0.1:9464. Without a configuration
# (SIDECAR_CONFIG or --config), it runs the quick-start checks of examples/sidecar.toml (the sidecar's own
# /healthz over HTTP, its port over TCP, and the root disk) with the history in ./.sidecar, unless a data
# directory is given (SIDECAR_DATA_DIR or --data-dir).
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
config=(--config examples/sidecar.toml)
data=(--data-dir .sidecar)
if [[ -n "${SIDECAR_CONFIG:-}" ]]; then
    config=()
fi
if [[ -n "${SIDECAR_DATA_DIR:-}" ]]; then
    data=()
fi
for arg in "$@"; do
    if [[ "$arg" == --config || "$arg" == --config=* ]]; then
        config=()
    fi
    if [[ "$arg" == --data-dir || "$arg" == --data-dir=* ]]; then
        data=()
    fi
done
if [[ ${#config[@]} -eq 0 ]]; then
    data=()  # your configuration says where its history lives (or the default does)
fi
exec .venv/bin/sidecar serve "${config[@]}" "${data[@]}" "$@"
