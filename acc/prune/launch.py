"""`--devices cuda:0,cuda:1,...`: start one process per device as the ranks of one training job
on this machine, what `torchrun --standalone --nproc-per-node N` would do, without its elastic
agent (whose failure report is a page of traceback).

Rank 0 talks to the user (its output is the command's output); the other ranks stay quiet unless
one of them fails first, then its last error line is shown. When one rank fails the others are
stopped: they would wait for it in a collective until the timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from acc.errors import InputError
from acc.prune.distributed import DEVICES_ENV


def parse_devices(text: str) -> list[str]:
    """'cuda:0,cuda:1' -> ['cuda:0', 'cuda:1'], each checked against what this machine has."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise InputError("--devices takes a comma-separated list like cuda:0,cuda:1 (or cpu,cpu)")
    for device in devices:
        check_device(device)
    return devices


def check_device(device: str) -> None:
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return
    if kind != "cuda" or (index and not index.isdigit()):
        raise InputError(f"--devices: '{device}' is not a device (use cpu, cuda or cuda:N)")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index or 0) >= available:
        have = f"cuda:0..cuda:{available - 1}" if available else "no CUDA device"
        raise InputError(f"--devices: {device} does not exist on this machine ({have})")


def without_devices(argv: list[str]) -> list[str]:
    """The command line minus its --devices option."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], devices: list[str], poll_seconds: float = 0.2) -> int:
    """Run `acc <argv>` as len(devices) ranks; the exit code of the first rank that fails, else 0."""
    n = len(devices)
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(n),
            "LOCAL_WORLD_SIZE": str(n), DEVICES_ENV: ",".join(devices)}
    command = [sys.executable, "-m", "acc.cli", *without_devices(argv)]
    logs, procs = [], []
    with tempfile.TemporaryDirectory(prefix="acc-ranks-") as tmp:
        for rank in range(n):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            if rank == 0:
                procs.append(subprocess.Popen(command, env=env))
                logs.append(None)
            else:
                log = open(Path(tmp) / f"rank{rank}.log", "w+b")
                logs.append(log)
                procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log))
        try:
            failed = _wait(procs, poll_seconds)
        except KeyboardInterrupt:
            _stop(procs)
            raise
        finally:
            for log in logs:
                if log is not None:
                    log.close()
        if failed is None:
            return 0
        rank, code = failed
        if rank != 0:
            lines = (Path(tmp) / f"rank{rank}.log").read_text(errors="replace").strip().splitlines()
            print(f"acc: rank {rank} failed: {lines[-1] if lines else f'exit code {code}'}", file=sys.stderr)
        return code


def _wait(procs, poll_seconds: float):
    """None when every rank exits 0; else (rank, code) of the first to fail, the others stopped."""
    while True:
        running = False
        for rank, p in enumerate(procs):
            code = p.poll()
            if code is None:
                running = True
            elif code != 0:
                if rank != 0:  # rank 0 usually fails on the same input: let it say so, once
                    try:
                        first = procs[0].wait(timeout=3.0)
                    except subprocess.TimeoutExpired:
                        first = None
                    if first:
                        rank, code = 0, first
                _stop(procs)
                return rank, code
        if not running:
            return None
        time.sleep(poll_seconds)


def _stop(procs, grace_seconds: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + grace_seconds
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
