"""`acc bench MODEL.onnx|model.so`: latency on the host or on a device over TVM RPC."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from acc.atomic import write_text
from acc.backends import bench as bench_mod
from acc.commands.build import add_target_options, build_options


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time a model with TVM (and onnxruntime) locally or over RPC",
                              description="Check TVM's outputs against onnxruntime, then time them: on the host "
                                          "(each engine in its own process) or on a device over TVM RPC.")
    p.add_argument("model", help="an ONNX model (compiled here) or a library from `acc build`")
    add_target_options(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rpc", metavar="HOST:PORT", help="a TVM RPC server")
    where.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker (with --key)")
    p.add_argument("--key", help="the device key at the tracker")
    p.add_argument("--compare", metavar="OTHER", help="a second model timed interleaved with the first")
    p.add_argument("--repeat", type=int, default=30, help="timing rounds per model (default 30)")
    p.add_argument("--min-repeat-ms", type=float, default=None,
                   help="shortest round in ms; short models run several times per round "
                        "(default 100 on the host, 0 on a device)")
    p.add_argument("--no-onnxruntime", action="store_true", help="do not time onnxruntime (it still checks outputs)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    result = bench_mod.bench(
        args.model, args.target, rpc=args.rpc, tracker=args.tracker, key=args.key, compare=args.compare,
        repeat=args.repeat, min_repeat_ms=args.min_repeat_ms, onnxruntime=not args.no_onnxruntime, log=log,
        **build_options(args),
    )
    print(result.table())
    if args.json:
        write_text(args.json, json.dumps(asdict(result), indent=2) + "\n")
    return 0
