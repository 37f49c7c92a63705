"""How many threads TVM's runtime uses on this machine.

Unless told otherwise (TVM_NUM_THREADS, or OMP_NUM_THREADS), TVM's thread pool takes half of
`std::thread::hardware_concurrency()` on x86, assuming every core is hyper-threaded. On a VM or a
container without SMT that is half the cores: on 2 cores TVM ran on one while onnxruntime (which
counts physical cores) ran on two, and every TVM-vs-onnxruntime figure was off by that factor.
acc sets TVM_NUM_THREADS to the physical cores this process may run on, as onnxruntime does.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")


def allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None, sysfs: Path = SYSFS_CPU) -> int:
    """Distinct (package, core) pairs among `cpus`; the CPU count where the topology is unreadable."""
    cpus = allowed_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topo = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add((int((topo / "physical_package_id").read_text()), int((topo / "core_id").read_text())))
        except (OSError, ValueError):
            return max(len(cpus), 1)
    return max(len(cores), 1)


def configure_tvm_threads(environ=os.environ) -> int | None:
    """Set TVM_NUM_THREADS for this process and its children, unless the user chose a count.

    Must run before TVM's thread pool starts (its first parallel kernel). Returns the count set.
    """
    if environ.get("TVM_NUM_THREADS") or environ.get("OMP_NUM_THREADS"):
        return None
    count = physical_cores()
    environ["TVM_NUM_THREADS"] = str(count)
    return count
