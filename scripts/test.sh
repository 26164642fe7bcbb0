#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite against the real server and real models.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
# The speech tests transcribe real LibriVox clips from Debian's pocketsphinx-testdata.
if [ ! -f /usr/share/pocketsphinx/test/data/librivox/transcription ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -qq pocketsphinx-testdata >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq pocketsphinx-testdata >/dev/null; }
fi
exec .venv/bin/python -m pytest tests "$@"
