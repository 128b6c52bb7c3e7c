"""CPU/GPU choice and thread count."""
from __future__ import annotations

import os
import platform
import subprocess

from convert.errors import KilnError

GPU_INSTALL_HINT = ("reinstall llama-cpp-python with a GPU backend, e.g. "
                    "CMAKE_ARGS=\"-DGGML_METAL=on\" (Apple) or CMAKE_ARGS=\"-DGGML_CUDA=on\" "
                    "pip install --force-reinstall --no-cache-dir llama-cpp-python")


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def choose_gpu_layers(device: str = "auto", gpu_layers: int | None = None) -> int:
    """Layers to offload: all when a GPU backend is built in (auto/gpu), none for cpu."""
    if device not in ("auto", "cpu", "gpu"):
        raise KilnError(None, f"unknown device '{device}' (choose from: auto, cpu, gpu)")
    if device == "cpu":
        return 0
    supported = gpu_offload_supported()
    if device == "gpu" and not supported:
        raise KilnError(None, f"this llama-cpp-python build has no GPU backend; {GPU_INSTALL_HINT}")
    if gpu_layers is not None:
        return gpu_layers if supported else 0
    return -1 if supported else 0


def default_threads() -> int:
    """Physical cores minus one (at least one): see `threads_reason`."""
    return max(1, (physical_cores() or os.cpu_count() or 1) - 1)


def threads_reason() -> str:
    """Why `default_threads` chose what it did, as `kiln doctor` says it."""
    cores = physical_cores() or os.cpu_count() or 1
    n = default_threads()
    if cores == 1:
        return "1 thread: one core"
    return (f"{n} of {cores} physical cores, one left free: llama.cpp's threads spin-wait at "
            "every step, so when another program takes a core that llama.cpp uses, every token "
            "waits for it (2 cores, one competing process: 2 threads fell to 0.8 tokens/s, 1 "
            "thread kept 22; scripts/bench_runtime.py --load). Hyper-threads are not counted. "
            "--threads N overrides.")


def physical_cores() -> int | None:
    system = platform.system()
    try:
        if system == "Linux":
            cores = set()
            phys = core = None
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    key = key.strip()
                    if key == "physical id":
                        phys = value.strip()
                    elif key == "core id":
                        core = value.strip()
                    elif not line.strip():
                        if core is not None:
                            cores.add((phys, core))
                        phys = core = None
            if core is not None:
                cores.add((phys, core))
            return len(cores) or None
        if system == "Darwin":
            out = subprocess.run(["sysctl", "-n", "hw.physicalcpu"], capture_output=True,
                                 text=True, timeout=5)
            return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return None


def report() -> dict:
    """What `kiln doctor` prints: the build's backends and what kiln would choose."""
    import llama_cpp

    supported = gpu_offload_supported()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "gpu_offload": supported,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "default_threads": default_threads(),
        "threads_why": threads_reason(),
        "default_device": "gpu (all layers)" if supported else "cpu",
        "platform": f"{platform.system()} {platform.machine()}",
    }
