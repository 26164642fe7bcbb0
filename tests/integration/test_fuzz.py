"""Schemathesis against the server's own /openapi.json: every route, a bounded run.

What must hold: no 5xx but the documented 503 and 507, every error in OpenAI's envelope (the
declared error schema), every answer in the declared shape and media type, schema-breaking input
refused, schema-valid input accepted (but where tests/schemathesis.toml says why it cannot be),
methods in `Allow`, no request over a few seconds, and the server healthy and idle afterwards with
no traceback in its log. `tests/fuzz_hooks.py` trims valid requests (output tokens, speech length)
so that each is quick on 2 cores; the real limits are tested elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, idle, run_server, wait_until

# a valid request at the bounds below takes a few seconds; the slowest (a whole 512-token context of answer with
# logprobs, beside the other worker's request) took 15.1 s in one full run, so the bound that tells a hang is 20 s
MAX_RESPONSE_S = 20
EXAMPLES = int(os.environ.get("OMNISERVE_FUZZ_EXAMPLES", "6"))
# the checks, the documented 503 and 507, and where schema-valid data may be refused (with the reasons)
CONFIG = ROOT / "tests" / "schemathesis.toml"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """Every default stage, a short context (so any chat is quick), and a sketch-rnn image model."""
    from tests.conftest import shared_models

    sketches = shared_models() / "sketch-rnn-quickdraw"
    with run_server("--context-length", "512", "--image-model", f"sketch-rnn:{sketches}",
                    "--grammar-timeout", "3", tmp_path=tmp_path_factory.mktemp("fuzz")) as s:
        yield s


def test_schemathesis_finds_nothing(fuzz_server):
    s = fuzz_server
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "run",
           s.base_url + "/openapi.json",
           "--max-examples", str(EXAMPLES), "--phases", "examples,coverage,fuzzing",
           "--max-response-time", str(MAX_RESPONSE_S), "--request-timeout", "60", "--workers", "2",
           "--suppress-health-check", "all", "--seed", "20261129", "--no-color", "--max-failures", "20"]
    t0 = time.time()
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    took = time.time() - t0
    report = done.stdout[-12000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"schemathesis found problems ({took:.0f} s):\n{report}"
    assert "0 errored" in report or "errored" not in report, report
    with s.http() as http:
        assert http.get("/health").status_code == 200
        wait_until(lambda: idle(http), timeout=30)
    assert "Traceback" not in s.log(), s.log()[-5000:]
