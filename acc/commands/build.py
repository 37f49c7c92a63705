"""`acc build MODEL.onnx --target T -o model.so`: compile with TVM (optionally tuned) for a target."""

from __future__ import annotations

import sys

from acc.backends import compile as compile_mod
from acc.backends import targets


def add_target_options(p) -> None:
    p.add_argument("--target", default=None,
                   help=f"target preset: {', '.join(targets.preset_names())} (default host)")
    p.add_argument("--target-json", metavar="JSON|FILE",
                   help='any TVM target as a JSON object or a file holding one, e.g. '
                        '\'{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}\'')
    p.add_argument("--cc", help="the C++ compiler that links the library (default per target; "
                                "Android: $TVM_NDK_CC)")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3x32x32",
                   help="fix an input's shape (repeatable); free dims default to 1")
    p.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="MetaSchedule trials per task not yet in the database (0: no tuning)")
    p.add_argument("--tune-db", metavar="DIR",
                   help="tuning database root, reused across runs and models (default ~/.cache/acc/tune)")


def build_options(args) -> dict:
    return {
        "target_json": args.target_json,
        "cc": args.cc,
        "input_shapes": compile_mod.parse_input_shapes(args.input_shape),
        "tune_trials": args.tune_trials,
        "tune_db": args.tune_db,
    }


def register(subparsers) -> None:
    p = subparsers.add_parser("build", help="compile an ONNX model into a TVM shared library for a target",
                              description="Compile an ONNX model with TVM into one shared library "
                                          "(plus LIB.json describing its inputs, outputs and target).")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("-o", "--output", help="the library to write (default MODEL.so)")
    add_target_options(p)
    p.add_argument("--tracker", metavar="HOST:PORT", help="tune on a device behind this RPC tracker")
    p.add_argument("--key", help="the device key at the tracker")
    p.set_defaults(func=run)


def run(args) -> int:
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731 - progress on stderr, results on stdout
    result = compile_mod.build(args.model, args.target, args.output, tracker=args.tracker, key=args.key,
                               log=log, **build_options(args))
    ins = ", ".join(f"{i.name} {'x'.join(map(str, i.shape))} {i.dtype}" for i in result.inputs)
    print(f"wrote {result.library} and {result.metadata} (target {result.target}; inputs {ins}; "
          f"{result.seconds:.1f} s)")
    if result.tuning:
        t = result.tuning
        print(f"tuning: {t['tasks']} tasks, {t['reused']} from the database, {t.get('transferred', 0)} seeded from "
              f"the same op at a tuned width, {t['tuned']} tuned x {t['trials_per_task']} trials; database {t['db']}")
    return 0
