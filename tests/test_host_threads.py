import subprocess
import sys

from acc.backends import host_threads


def _topology(root, cpus):
    for cpu, (package, core) in cpus.items():
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")


def test_hyperthread_siblings_count_once(tmp_path):
    _topology(tmp_path, {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1), 4: (1, 0)})
    assert host_threads.physical_cores({0, 1, 2, 3, 4}, tmp_path) == 3
    assert host_threads.physical_cores({0, 2}, tmp_path) == 1


def test_unreadable_topology_counts_cpus(tmp_path):
    assert host_threads.physical_cores({0, 1, 5}, tmp_path) == 3


def test_user_choice_is_kept():
    env = {"OMP_NUM_THREADS": "1"}
    assert host_threads.configure_tvm_threads(env) is None and "TVM_NUM_THREADS" not in env
    env = {"TVM_NUM_THREADS": "3"}
    assert host_threads.configure_tvm_threads(env) is None and env["TVM_NUM_THREADS"] == "3"
    env = {}
    assert host_threads.configure_tvm_threads(env) == host_threads.physical_cores()
    assert env["TVM_NUM_THREADS"] == str(host_threads.physical_cores())


def test_tvm_runtime_uses_every_physical_core():
    # TVM alone takes half the hardware threads on x86; through acc it takes the physical cores.
    code = ("import tvm, acc.backends, acc.backends.host_threads as h; "
            "print(tvm.get_global_func('runtime.NumThreads')(), h.physical_cores())")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    used, cores = out.split()
    assert used == cores
