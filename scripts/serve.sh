#!/usr/bin/env bash
# Set up (if needed) and start the server on the embedded default model; extra args go to `omniserve serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/omniserve serve "$@"
