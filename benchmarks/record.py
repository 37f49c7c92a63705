"""What every benchmark records beside its rows: the machine, the versions, and the JSON file."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for name, dist in (("acc", "acc"), ("torch", "torch"), ("onnxruntime", "onnxruntime"), ("tvm", "apache-tvm"), ("onnx", "onnx")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write(name: str, question: str, rows: list[dict], budget: dict, out_dir: str | os.PathLike | None = None, **extra) -> Path:
    folder = Path(out_dir) if out_dir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    record = {"question": question, "rows": rows, "budget": budget, "machine": machine(), "versions": versions(), **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float))
    os.replace(tmp, path)
    return path
