"""TVM RPC trackers and servers as child processes, and connecting to them with one-line errors.

Tracker and server each spawn worker children; each is started in its own session so that
stopping it kills the whole process group and leaves nothing listening.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from acc.errors import InputError, ToolchainError

# The server script runs through a given python (possibly the emulated one); it must hand that
# same python to the workers it spawns, which read sys.executable.
_SERVER_LAUNCH = (
    "import runpy, sys; sys.executable = sys.argv[1]; "
    "sys.argv = ['rpc_server'] + sys.argv[2:]; "
    "runpy.run_module('tvm.exec.rpc_server', run_name='__main__')"
)


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A tracker or server child process (and its process group)."""

    proc: subprocess.Popen
    host: str
    port: int
    key: str = ""
    log_path: str = ""
    _log: object = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive the leader: always sweep the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        # Killed workers linger until init reaps them; return once the group is really empty.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _spawn(cmd: list[str], host: str, port: int, key: str = "", env: dict | None = None) -> ServerProcess:
    log = tempfile.NamedTemporaryFile("w+", prefix="acc-rpc-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(env or {})},
    )
    return ServerProcess(proc, host, port, key, log.name, log)


def _wait(server: ServerProcess, ready, timeout: float, what: str) -> ServerProcess:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log_tail()
            server.stop()
            raise ToolchainError(f"{what} exited at start: {tail or 'no output'}")
        if ready():
            return server
        time.sleep(0.5)
    tail = server.log_tail()
    server.stop()
    raise ToolchainError(f"{what} did not become ready within {timeout:.0f} s: {tail or 'no output'}")


def start_tracker(host: str = "127.0.0.1", port: int | None = None, timeout: float = 60.0) -> ServerProcess:
    port = port or free_port(host)
    tracker = _spawn(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port), "--port-end", str(port + 1)],
        host, port,
    )

    def ready() -> bool:
        try:
            tracker_summary(host, port, timeout=2.0)
            return True
        except ToolchainError:
            return False

    return _wait(tracker, ready, timeout, f"RPC tracker on {host}:{port}")


def start_server(
    host: str = "127.0.0.1",
    port: int | None = None,
    tracker: tuple[str, int] | None = None,
    key: str = "",
    python: str | None = None,
    timeout: float = 60.0,
) -> ServerProcess:
    """Start `tvm.exec.rpc_server` under `python` (default: this one) and wait until it serves.

    With a tracker the server registers under `key` and is ready once the tracker lists it;
    without one it is ready once a client session opens.
    """
    python = python or sys.executable
    port = port or free_port(host)
    cmd = [python, "-c", _SERVER_LAUNCH, python, "--host", host, "--port", str(port), "--port-end", str(port + 1)]
    if tracker:
        cmd += ["--tracker", f"{tracker[0]}:{tracker[1]}", "--key", key]
    server = _spawn(cmd, host, port, key)
    what = f"RPC server on {host}:{port}"
    if tracker:
        return _wait(server, lambda: _tracker_has(tracker, key, port), timeout, what)

    def ready() -> bool:
        try:
            sess = __import__("tvm.rpc", fromlist=["connect"]).connect(host, port, session_timeout=30)
            del sess
            return True
        except Exception:  # noqa: BLE001 - not listening yet; the loop retries until the deadline
            return False

    return _wait(server, ready, timeout, what)


def _tracker_has(tracker: tuple[str, int], key: str, port: int) -> bool:
    try:
        info = tracker_summary(*tracker, timeout=2.0)
    except ToolchainError:
        return False
    return any(s["key"].split(":", 1)[-1] == key and int(s["addr"][1]) == port for s in info.get("server_info", []))


def _check_reachable(host: str, port: int, what: str, timeout: float) -> None:
    # tvm.rpc retries refused connections for 60 s; a user deserves the answer at once.
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ToolchainError(f"cannot reach {what} at {host}:{port}: {reason}") from None


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict:
    from tvm import rpc as tvm_rpc

    _check_reachable(host, port, "RPC tracker", timeout)
    try:
        client = tvm_rpc.connect_tracker(host, port)
        try:
            return client.summary()
        finally:
            client.close()
    except Exception as err:  # noqa: BLE001 - TVM raises bare RuntimeError/TVMError
        raise ToolchainError(f"RPC tracker at {host}:{port} did not answer: {_one_line(err)}") from None


def connect(
    rpc_addr: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    session_timeout: float = 0,
    wait: float | None = None,
):
    """An RPC session to a server (HOST:PORT) or to a device with `key` behind a tracker; a tracker
    whose devices of `key` are all busy is waited on for `wait` seconds (default ACC_RPC_WAIT or 60)."""
    from tvm import rpc as tvm_rpc

    if rpc_addr and tracker:
        raise InputError("give either --rpc HOST:PORT or --tracker HOST:PORT --key KEY, not both")
    if tracker:
        if not key:
            raise InputError("--tracker needs --key (the device key the server registered with)")
        host, port = parse_hostport(tracker, "--tracker")
        info = tracker_summary(host, port)
        keys = sorted({s["key"].split(":", 1)[-1] for s in info.get("server_info", [])})
        if key not in keys:
            raise ToolchainError(
                f"no RPC server with key {key!r} at tracker {host}:{port} (keys there: {', '.join(keys) or 'none'})"
            )
        wait = float(os.environ.get("ACC_RPC_WAIT", 60)) if wait is None else wait
        return _request_within(host, port, key, session_timeout, wait)
    host, port = parse_hostport(rpc_addr, "--rpc")
    _check_reachable(host, port, "RPC server", 5.0)
    try:
        return tvm_rpc.connect(host, port, session_timeout=session_timeout)
    except Exception as err:  # noqa: BLE001
        raise ToolchainError(f"RPC server at {host}:{port} refused the session: {_one_line(err)}") from None


def _request_within(host: str, port: int, key: str, session_timeout: float, wait: float):
    """The tracker queues a request until a device is free: wait for it at most `wait` seconds.

    TVM's TrackerSession.request blocks for as long as that takes, and retries for a minute more
    when the tracker goes away; this speaks the tracker's protocol on a socket with a timeout."""
    import struct

    from tvm import rpc as tvm_rpc
    from tvm.rpc import base

    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                raise ToolchainError(f"{host}:{port} is not a TVM RPC tracker")
            sock.settimeout(wait)
            base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
            value = base.recvjson(sock)
    except socket.timeout:
        raise ToolchainError(f"no free device with key {key!r} at tracker {host}:{port} within {wait:.0f} s "
                             "(all are busy; set ACC_RPC_WAIT to wait longer)") from None
    except OSError as err:
        raise ToolchainError(f"tracker {host}:{port} gave no session for key {key!r}: {_one_line(err)}") from None
    if value[0] != base.TrackerCode.SUCCESS:
        raise ToolchainError(f"tracker {host}:{port} refused the request for key {key!r}: {value}")
    url, server_port, match_key = value[1]
    try:
        return tvm_rpc.connect(url, server_port, match_key, session_timeout)
    except Exception as err:  # noqa: BLE001 - TVM raises bare RuntimeError/TVMError
        raise ToolchainError(f"the device {key!r} at {url}:{server_port} refused the session: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
