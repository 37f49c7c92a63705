"""The compiler that links a TVM library for a target, found before any compile work starts."""

from __future__ import annotations

import os
import shutil

from acc.backends.targets import TargetSpec
from acc.errors import ToolchainError

# Debian package that provides each default cross compiler, for the error message.
DEBIAN_PACKAGE = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "g++": "g++"}


def resolve_cc(spec: TargetSpec, cc: str | None = None) -> str | None:
    """The linker command for `spec` (None: TVM's default host compiler); raise if it is missing."""
    if cc is None and spec.cc_env:
        cc = os.environ.get(spec.cc_env) or None
    if cc is None and spec.needs_cc_env:
        raise ToolchainError(
            f"target {spec.name!r} links with the Android NDK's clang: set {spec.cc_env}=/path/to/ndk/"
            "toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android29-clang++ or pass --cc"
        )
    cc = cc or spec.cc
    if cc is None:
        if shutil.which("g++") is None and shutil.which("gcc") is None:
            raise ToolchainError("no C++ compiler to link the host library: apt-get install g++")
        return None
    if shutil.which(cc) is None and not os.access(cc, os.X_OK):
        base = os.path.basename(cc)
        pkg = DEBIAN_PACKAGE.get(base)
        hint = f"apt-get install {pkg}" if pkg else "install it or pass --cc"
        raise ToolchainError(f"cross compiler {cc} not found for target {spec.name!r}: {hint}")
    return cc


def fcompile(cc: str | None):
    """An export_library fcompile for `cc` (None: TVM's default)."""
    if cc is None:
        return None
    from tvm.support import cc as tvm_cc

    return tvm_cc.cross_compiler(cc)
