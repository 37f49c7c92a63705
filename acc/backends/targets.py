"""Named compile targets: a TVM target (dict or tag) plus the C++ compiler that links for it.

TVM 0.27 refuses flag strings ("llvm -mtriple=..."), so presets are dicts or registered tags.
Anything else comes in as --target-json (a JSON object, or a file holding one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from acc.errors import InputError

AARCH64_LINUX_CC = "aarch64-linux-gnu-g++"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    target: dict | str  # TVM target dict or tag
    cc: str | None = None  # default linker; None: TVM's host compiler
    cc_env: str | None = None  # environment variable naming the linker (Android NDK)
    description: str = ""
    needs_cc_env: bool = field(default=False)

    @property
    def is_host(self) -> bool:
        return self.name == "host"

    def tvm_target(self):
        import tvm

        try:
            return tvm.target.Target(self.target)
        except Exception as err:  # noqa: BLE001 - TVM raises ValueError/TVMError with long text
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"TVM does not accept target {self.name!r}: {first}") from None

    def as_json(self) -> dict | str:
        return self.target


def _host_target() -> dict:
    from tvm.target import codegen

    # Without mcpu LLVM emits baseline x86-64 (no AVX); the host build is for this machine.
    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": os.cpu_count() or 1}


def _aarch64(mcpu: str | None, mattr: list[str], cores: int | None = None) -> dict:
    t: dict = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": mattr}
    if mcpu:
        t["mcpu"] = mcpu
    if cores:
        t["num-cores"] = cores
    return t


PRESETS: dict[str, TargetSpec] = {
    "arm64": TargetSpec("arm64", _aarch64(None, ["+neon"]), AARCH64_LINUX_CC,
                        description="generic aarch64 Linux with NEON"),
    "rpi3": TargetSpec("rpi3", _aarch64("cortex-a53", ["+neon"], 4), AARCH64_LINUX_CC,
                       description="Raspberry Pi 3 (Cortex-A53, 64-bit OS)"),
    "rpi4": TargetSpec("rpi4", "raspberry-pi/4b-aarch64", AARCH64_LINUX_CC,
                       description="Raspberry Pi 4 (Cortex-A72, 64-bit OS; TVM tag)"),
    "rpi5": TargetSpec("rpi5", _aarch64("cortex-a76", ["+neon", "+dotprod"], 4), AARCH64_LINUX_CC,
                       description="Raspberry Pi 5 (Cortex-A76 with dotprod)"),
    "jetson-nano": TargetSpec("jetson-nano", _aarch64("cortex-a57", ["+neon"], 4), AARCH64_LINUX_CC,
                              description="Jetson Nano CPU (Cortex-A57)"),
    "pixel": TargetSpec("pixel", {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "cortex-a76",
                                  "mattr": ["+neon", "+dotprod"]},
                        cc_env="TVM_NDK_CC", needs_cc_env=True,
                        description="Android phone with Cortex-A76 big cores (needs TVM_NDK_CC or --cc)"),
}


def preset_names() -> list[str]:
    return ["host", *PRESETS]


def _linker_for(target: dict | str) -> tuple[str | None, str | None, bool]:
    """(cc, cc_env, needs_cc_env) for a user-given target, from its triple."""
    import tvm

    triple = str(tvm.target.Target(target).attrs.get("mtriple", "")) if target else ""
    if "android" in triple:
        return None, "TVM_NDK_CC", True
    if triple.startswith(("aarch64", "arm64")):
        return AARCH64_LINUX_CC, None, False
    return None, None, False


def resolve(name: str | None = None, target_json: str | None = None) -> TargetSpec:
    """A preset by name, or a target from --target-json (a JSON string or a file)."""
    if target_json:
        if name and name != "custom":
            raise InputError("give --target or --target-json, not both")
        text = target_json
        if not text.lstrip().startswith("{") and Path(text).is_file():
            text = Path(text).read_text()
        try:
            target = json.loads(text)
        except ValueError as err:
            raise InputError(f"--target-json is neither a JSON object nor a readable file: {err}") from None
        if not isinstance(target, dict) or "kind" not in target:
            raise InputError('--target-json must be a JSON object with a "kind" (e.g. {"kind": "llvm", ...})')
        spec = TargetSpec("custom", target)
        spec.tvm_target()  # fail early, in one line
        cc, cc_env, needs = _linker_for(target)
        return TargetSpec("custom", target, cc, cc_env, "from --target-json", needs)
    name = name or "host"
    if name == "host":
        return TargetSpec("host", _host_target(), description="this machine")
    if name not in PRESETS:
        raise InputError(f"unknown target {name!r}; choose one of {', '.join(preset_names())} or use --target-json")
    return PRESETS[name]
