#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite against the real server and real models.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
# From Debian: the speech tests transcribe real LibriVox clips (pocketsphinx-testdata); the playground
# tests drive headless Chromium through its chromedriver (chromium, chromium-driver).
if { [ ! -f /usr/share/pocketsphinx/test/data/librivox/transcription ] || ! command -v chromedriver >/dev/null; } \
    && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  PACKAGES="pocketsphinx-testdata chromium chromium-driver"
  $SUDO apt-get install -y -qq $PACKAGES >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq $PACKAGES >/dev/null; }
fi
# The unit tests first (pure logic, about 20 s): a broken commit fails before any server starts. Then the rest.
.venv/bin/python -m pytest tests/unit "$@"
exec .venv/bin/python -m pytest tests --ignore=tests/unit "$@"
