"""llama.cpp's own tools (llama-server, llama-quantize, ...) for tests, built once per machine.

They are built from the sdist of the installed llama-cpp-python version, so that the tools and
the library the tests load are the same llama.cpp:

    ~/.cache/kiln-tests/                        (KILN_TEST_CACHE overrides)
      sdist/llama_cpp_python-V.tar.gz           pip download --no-deps --no-binary :all:
      llama_cpp_python-V/vendor/llama.cpp/      the extracted source
      llama-build-V/bin/<tool>                  cmake --build --target <tool>, only what is asked

A file lock (llama-build-V.lock) keeps two test processes from building at once; the second
waits and then finds the tool. Without cmake, a C++ compiler or the package registry the tier is
skipped with the reason, except under CI (env CI set), where it fails: there it must run.
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON"]


def cache_root() -> Path:
    return Path(os.environ.get("KILN_TEST_CACHE") or Path.home() / ".cache" / "kiln-tests")


def llama_cpp_python_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        unavailable("llama-cpp-python is not installed")


def source_dir(version: str) -> Path:
    return cache_root() / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"


def build_dir(version: str) -> Path:
    return cache_root() / f"llama-build-{version}"


def unavailable(reason: str):
    """Skip the tier with `reason`; under CI, fail instead (the tier must run there)."""
    if os.environ.get("CI"):
        pytest.fail(f"llama.cpp tools unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"llama.cpp tools unavailable: {reason}")


def tool(name: str) -> Path:
    """Path of llama.cpp tool `name` (a cmake target, e.g. "llama-server"), built if absent."""
    version = llama_cpp_python_version()
    exe = build_dir(version) / "bin" / name
    if _runnable(exe):
        return exe
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f"llama-build-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # another process may be building: wait
        if not _runnable(exe):
            _build(version, name)
    if not _runnable(exe):
        pytest.fail(f"built {name} but {exe} is not there", pytrace=False)
    return exe


def _runnable(exe: Path) -> bool:
    return exe.is_file() and os.access(exe, os.X_OK)


def _build(version: str, target: str) -> None:
    cmake = shutil.which("cmake")
    if cmake is None:
        unavailable("cmake not found on PATH")
    if not any(shutil.which(c) for c in (os.environ.get("CXX") or "c++", "g++", "clang++")):
        unavailable("no C++ compiler (c++, g++, clang++) on PATH")
    src = _source(version)
    build = build_dir(version)
    log_path = cache_root() / f"llama-build-{version}.log"
    _say(f"building {target} from the llama-cpp-python {version} sdist (once per machine; "
         f"log: {log_path})")
    with open(log_path, "a", encoding="utf-8") as log:
        if not (build / "CMakeCache.txt").is_file():
            _run([cmake, "-S", str(src), "-B", str(build), *CMAKE_FLAGS], log, log_path)
        _run([cmake, "--build", str(build), "--target", target, "-j", str(os.cpu_count() or 2)],
             log, log_path)


def _source(version: str) -> Path:
    src = source_dir(version)
    if (src / "CMakeLists.txt").is_file():
        return src
    sdist_dir = cache_root() / "sdist"
    archive = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
    if not archive.is_file():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        _say(f"downloading the llama-cpp-python {version} sdist")
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                              "--no-binary", ":all:", f"llama-cpp-python=={version}",
                              "-d", str(sdist_dir)], capture_output=True, text=True)
        if res.returncode != 0 or not archive.is_file():
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no archive"]
            unavailable(f"pip download llama-cpp-python=={version} failed: {tail[0]}")
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(cache_root(), filter="data")
        except TypeError:                          # Python < 3.11.4: no extraction filters
            tar.extractall(cache_root())
    if not (src / "CMakeLists.txt").is_file():
        pytest.fail(f"{archive} has no vendor/llama.cpp/CMakeLists.txt", pytrace=False)
    return src


def _run(cmd: list[str], log, log_path: Path) -> None:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.write(f"rc={res.returncode}\n")
    if res.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:3])} ... failed (rc {res.returncode}); see {log_path}",
                    pytrace=False)


def _say(text: str) -> None:
    print(f"[llama_tools] {text}", file=sys.__stderr__, flush=True)
