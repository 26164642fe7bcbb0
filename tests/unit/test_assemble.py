from pathlib import Path

import pytest

from omniserve.errors import ConfigError
from omniserve.models.defaults import _not_gguf, assemble
from omniserve.models.kokoro import _sha256_mismatch
from omniserve.models.registry import resolve_model_path


def test_assemble_concatenates_parts_in_order(tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF", b"-two", b"-three"]):
        p = tmp_path / f"part{i}"
        p.write_bytes(data)
        parts.append(p)
    target = tmp_path / "out" / "model.gguf"
    assemble(parts, target, check=_not_gguf)
    assert target.read_bytes() == b"GGUF-two-three"
    assert not Path(str(target) + ".partial").exists()


def test_assemble_refuses_parts_that_are_not_a_gguf(tmp_path):
    p = tmp_path / "part"
    p.write_bytes(b"nope")
    with pytest.raises(ConfigError):
        assemble([p], tmp_path / "m.gguf", check=_not_gguf)
    assert not (tmp_path / "m.gguf").exists()


def test_assemble_checks_a_sha256(tmp_path):
    p = tmp_path / "part"
    p.write_bytes(b"model bytes")
    good = "3f5d0e0a4f3a4ec3f4e2d1b9c0a4bd0c3ee55a27aa58fd1e2b3e1e1e6e1a2d6b"
    with pytest.raises(ConfigError, match="sha256"):
        assemble([p], tmp_path / "m.onnx", check=lambda path: _sha256_mismatch(path, good))
    assert not (tmp_path / "m.onnx").exists()
    import hashlib
    right = hashlib.sha256(b"model bytes").hexdigest()
    assemble([p], tmp_path / "m.onnx", check=lambda path: _sha256_mismatch(path, right))
    assert (tmp_path / "m.onnx").read_bytes() == b"model bytes"


def test_resolve_folder_and_default(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF....")
    assert resolve_model_path(str(tmp_path), tmp_path)[1].endswith("a.gguf")
    assert resolve_model_path(None, tmp_path)[1].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(ConfigError):
        resolve_model_path(str(tmp_path / "empty-or-missing"), tmp_path)
