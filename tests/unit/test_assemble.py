from pathlib import Path

import pytest

from omniserve.errors import ConfigError
from omniserve.models.defaults import assemble
from omniserve.models.registry import resolve_model_path


def test_assemble_concatenates_parts_in_order(tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF", b"-two", b"-three"]):
        p = tmp_path / f"part{i}"
        p.write_bytes(data)
        parts.append(p)
    target = tmp_path / "out" / "model.gguf"
    assemble(parts, target)
    assert target.read_bytes() == b"GGUF-two-three"
    assert not Path(str(target) + ".partial").exists()


def test_assemble_refuses_parts_that_are_not_a_gguf(tmp_path):
    p = tmp_path / "part"
    p.write_bytes(b"nope")
    with pytest.raises(ConfigError):
        assemble([p], tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_resolve_folder_and_default(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF....")
    assert resolve_model_path(str(tmp_path), tmp_path)[1].endswith("a.gguf")
    assert resolve_model_path(None, tmp_path)[1].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(ConfigError):
        resolve_model_path(str(tmp_path / "empty-or-missing"), tmp_path)
