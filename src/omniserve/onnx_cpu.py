"""ONNX Runtime sessions on the CPU, made one way: each stage's models run on the threads the stage was given
(`intra_op`), one operator at a time (inter-op parallelism would take threads from the other stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cpu_session(path: str | Path, threads: int = 1, quiet: bool = False) -> Any:
    """An `onnxruntime.InferenceSession` for `path`; `quiet`: it logs nothing (not even warnings)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if quiet:
        options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
