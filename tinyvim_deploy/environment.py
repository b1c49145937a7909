"""What is installed and what hardware is visible: used by ``tvdeploy info`` and stored with benchmarks."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_description() -> str:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if name and flags:
                    break
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    return f"{name} ({os.cpu_count()} cores{'; ' + ', '.join(isa) if isa else ''})"


def gpu_description() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "Apple MPS"
    except Exception:  # a broken CUDA install must not break `tvdeploy info`
        return "unknown (torch could not query CUDA)"
    return "none found"


def environment_report() -> dict[str, str]:
    report = {
        "tinyvim-deploy": package_version("tinyvim-deploy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "onnxslim", "coremltools",
                 "tensorrt", "openvino", "opencv-python-headless", "numpy"):
        report[dist] = package_version(dist)
    if report["onnxruntime"] == "not installed":
        report["onnxruntime"] = package_version("onnxruntime-gpu")
    try:
        import onnxruntime

        report["onnxruntime providers"] = ", ".join(onnxruntime.get_available_providers())
    except ImportError:
        pass
    report["cpu"] = cpu_description()
    report["gpu"] = gpu_description()
    return report
