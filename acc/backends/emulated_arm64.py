"""An emulated aarch64 Linux that runs a TVM RPC server, for anyone without an ARM board.

qemu-user-static runs an arm64 Debian python3.11 (from a debootstrap rootfs) with the manylinux
aarch64 apache-tvm wheel. binfmt_misc is not assumed, so every aarch64 process goes through a
wrapper script (`qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11`), and the RPC server is told
that the wrapper is its `sys.executable` so that the workers it spawns are emulated too.
Good for correctness and relative timings; absolute timings are ~10-15x slower than hardware.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from acc.backends import rpc
from acc.errors import ToolchainError

TVM_WHEEL = "apache-tvm==0.27.0.post1"
# 0.1.15.post2 segfaults in places on x86; keep the device on the version the host uses.
DEVICE_PACKAGES = [TVM_WHEEL, "apache-tvm-ffi==0.1.14.post1", "cloudpickle", "psutil", "tornado"]
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump when the recipe changes so that old caches are rebuilt rather than trusted.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class EmulatedArm64:
    home: Path

    @property
    def root(self) -> Path:
        return self.home / "root"

    @property
    def site(self) -> Path:
        return self.home / "site"

    @property
    def python(self) -> Path:
        """The wrapper that runs the emulated python3.11."""
        return self.home / "python3"

    @property
    def stamp(self) -> Path:
        return self.home / "ready.json"

    def is_ready(self) -> bool:
        try:
            info = json.loads(self.stamp.read_text())
        except (OSError, ValueError):
            return False
        return info.get("recipe") == RECIPE_VERSION and self.python.exists()


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acc" / "arm64-rootfs"


def missing_tools() -> list[str]:
    """Debian packages to install before the emulated device can be built."""
    need = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap", "dpkg-deb": "dpkg"}
    return [pkg for tool, pkg in need.items() if shutil.which(tool) is None]


def apt_mirror() -> str:
    """The Debian mirror this machine's apt sources name (debootstrap needs one)."""
    texts = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        with contextlib.suppress(OSError):
            texts.append(Path(path).read_text())
    for text in texts:
        for line in text.splitlines():
            m = re.match(r"\s*(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if m and "security" not in m.group(1) and m.group(1).startswith("http"):
                return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def _run(cmd: list[str], log, **kw) -> None:
    log(f"$ {' '.join(str(c) for c in cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolchainError(f"building the emulated arm64 device failed at `{cmd[0]}`: {tail[0]}")


def ensure_built(home: Path | None = None, log=print) -> EmulatedArm64:
    """Build the rootfs, the device-side site-packages and the wrapper once; reuse them after."""
    dev = EmulatedArm64(Path(home) if home else cache_home())
    if dev.is_ready():
        return dev
    missing = missing_tools()
    if missing:
        raise ToolchainError(
            f"the emulated arm64 device needs {', '.join(missing)}: apt-get install {' '.join(missing)}"
        )
    if os.geteuid() != 0:
        raise ToolchainError("building the emulated arm64 rootfs runs debootstrap, which needs root (run once as root)")
    dev.home.mkdir(parents=True, exist_ok=True)
    # Two processes (a test and a benchmark) may ask at once: one builds, the other waits.
    with open(dev.home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dev.is_ready():
            return dev
        _build(dev, log)
    return dev


def _build(dev: EmulatedArm64, log) -> None:
    for part in (dev.root, dev.site, dev.stamp, dev.python):
        if part.is_dir():
            shutil.rmtree(part)
        elif part.exists():
            part.unlink()
    log(f"building the emulated arm64 device in {dev.home} (once; a few minutes)")
    _run(
        ["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
         "--include=python3.11,libpython3.11-stdlib", SUITE, str(dev.root), apt_mirror()],
        log,
    )
    # --foreign leaves the packages unpacked only partly; without binfmt the second stage cannot
    # run, so unpack every downloaded .deb ourselves (no maintainer scripts are needed for python).
    debs = sorted(glob.glob(str(dev.root / "var/cache/apt/archives/*.deb")))
    if not debs:
        raise ToolchainError("debootstrap downloaded no packages for the emulated arm64 rootfs")
    log(f"unpacking {len(debs)} packages")
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, str(dev.root)], lambda _msg: None)
    for deb in debs:
        os.unlink(deb)
    _run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(dev.site),
         "--platform", "manylinux_2_28_aarch64", "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", *DEVICE_PACKAGES],
        log,
    )
    # The device only runs compiled libraries: the 250 MB compiler library is dead weight.
    for lib in glob.glob(str(dev.site / "tvm" / "lib*" / "libtvm_compiler.so")):
        os.unlink(lib)
    qemu = shutil.which("qemu-aarch64-static")
    dev.python.write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH='{dev.site}'\n"
        "export TVM_USE_RUNTIME_LIB=1\n"
        "export PYTHONDONTWRITEBYTECODE=1\n"
        f"exec '{qemu}' -L '{dev.root}' '{dev.root}/usr/bin/python3.11' \"$@\"\n"
    )
    dev.python.chmod(0o755)
    probe = subprocess.run(
        [str(dev.python), "-c", "import platform, tvm; print(platform.machine(), tvm.__version__)"],
        capture_output=True, text=True, timeout=600,
    )
    if probe.returncode != 0 or not probe.stdout.startswith("aarch64"):
        tail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolchainError(f"the emulated arm64 python does not run: {tail}")
    log(f"emulated python: {probe.stdout.strip()}")
    dev.stamp.write_text(json.dumps({"recipe": RECIPE_VERSION, "tvm": TVM_WHEEL, "probe": probe.stdout.strip()}))


def start_server(
    port: int | None = None,
    host: str = "127.0.0.1",
    tracker: tuple[str, int] | None = None,
    key: str = "arm64-emulated",
    home: Path | None = None,
    log=print,
    timeout: float = 300.0,
) -> rpc.ServerProcess:
    """Build if needed, then start the emulated RPC server and wait until it answers."""
    dev = ensure_built(home, log=log)
    return rpc.start_server(
        host=host, port=port, tracker=tracker, key=key, python=str(dev.python), timeout=timeout,
    )
