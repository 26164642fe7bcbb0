"""llama.cpp's own C++ server (`llama-server`), built once from the llama.cpp source that the pinned
llama-cpp-python sdist vendors, so that both sides of the LLM bench run the same ggml.

    python bench/llama_server.py       # build it into build/llama-server/ (a few minutes on 2 cores)
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

HOME = ROOT / "build" / "llama-server"


def binary() -> Path:
    return HOME / "cmake" / "bin" / "llama-server"


def build() -> Path:
    """The llama-server binary, built on first use: the sdist from PyPI, its vendor/llama.cpp, cmake."""
    if binary().is_file():
        return binary()
    pinned = version("llama-cpp-python")
    sdists = HOME / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = sdists / f"llama_cpp_python-{pinned}.tar.gz"
    if not archive.is_file():
        print(f"llama-server: fetching the llama-cpp-python {pinned} sdist", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={pinned}", "-d", str(sdists)], check=True)
    source = sdists / f"llama_cpp_python-{pinned}"
    if not source.is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(sdists, filter="data")
    vendored = source / "vendor" / "llama.cpp"
    cmake = HOME / "cmake"
    print(f"llama-server: building from {vendored}", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(vendored), "-B", str(cmake), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(cmake), "--target", "llama-server", "-j", "2"], check=True)
    return binary()


if __name__ == "__main__":
    print(build())
