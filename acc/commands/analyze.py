"""acc analyze MODEL.onnx [--json]: the channel groups, the boundaries and the totals."""

from __future__ import annotations

import json

from acc.commands.options import add_input_shape, parse_input_shapes
from acc.format import human, table


def register(sub) -> None:
    p = sub.add_parser("analyze", help="find the prunable channel groups and the boundaries of a model")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--prune-embedding", action="store_true",
                   help="count a transformer's residual stream (LayerNorm-coupled width) as prunable")
    add_input_shape(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from acc import api

    info = api.analyze(args.model, input_shapes=parse_input_shapes(args.input_shape), prune_embedding=args.prune_embedding)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    t = info["totals"]
    print(f"{args.model}: {t['nodes']} nodes, {human(t['params'])} parameters, {human(t['flops'])} FLOPs (MACs)")
    rows = [
        [g["name"], g["width"], g["unit"] + "s", g["prunable"], len(g["members"]), human(g["params"]), human(g["flops"])]
        for g in info["groups"]
    ]
    print()
    print(table(["group", "width", "unit", "prunable", "members", "params", "FLOPs"], rows, {1, 3, 4, 5, 6}))
    print()
    print(f"boundaries ({len(info['boundaries'])}):")
    for b in info["boundaries"]:
        print(f"  - {b['reason']}")
    print()
    print(f"{t['groups']} groups, {t['prunable_groups']} prunable, {t['boundaries']} boundaries")
    return 0
