"""`acc device ...`: RPC trackers and the emulated aarch64 device, in the foreground until Ctrl-C."""

from __future__ import annotations

import sys
import time

from acc.backends import emulated_arm64, rpc


def register(subparsers) -> None:
    p = subparsers.add_parser("device", help="start an RPC tracker or an emulated aarch64 TVM RPC server",
                              description="Serve TVM RPC in the foreground until interrupted.")
    sub = p.add_subparsers(dest="device_command", metavar="ACTION")
    sub.required = True

    emu = sub.add_parser("start-emulated-arm64",
                         help="an aarch64 Linux TVM RPC server under qemu-user (built once, cached)")
    emu.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    emu.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    emu.add_argument("--tracker", metavar="HOST:PORT", help="register with this tracker instead")
    emu.add_argument("--key", default="arm64-emulated", help="device key at the tracker (default arm64-emulated)")
    emu.add_argument("--build-only", action="store_true", help="build the cached rootfs and exit")
    emu.set_defaults(func=run_emulated)

    tr = sub.add_parser("start-tracker", help="a TVM RPC tracker")
    tr.add_argument("--host", default="127.0.0.1")
    tr.add_argument("--port", type=int, default=9190)
    tr.set_defaults(func=run_tracker)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _serve(proc: rpc.ServerProcess, what: str) -> int:
    print(what, flush=True)
    try:
        while proc.alive():
            time.sleep(1.0)
        _log(f"stopped unexpectedly: {proc.log_tail() or 'no output'}")
        return 1
    finally:
        proc.stop()


def run_emulated(args) -> int:
    if args.build_only:
        dev = emulated_arm64.ensure_built(log=_log)
        print(f"emulated arm64 device ready in {dev.home}")
        return 0
    tracker = rpc.parse_hostport(args.tracker, "--tracker") if args.tracker else None
    proc = emulated_arm64.start_server(port=args.port, host=args.host, tracker=tracker, key=args.key, log=_log)
    where = f"registered at tracker {args.tracker} as key {args.key!r}" if tracker else f"serving on {proc.address}"
    return _serve(proc, f"emulated arm64 TVM RPC server {where} (Ctrl-C to stop)")


def run_tracker(args) -> int:
    proc = rpc.start_tracker(args.host, args.port)
    return _serve(proc, f"TVM RPC tracker on {proc.address} (Ctrl-C to stop)")
