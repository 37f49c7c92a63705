"""acc shrink MODEL.onnx -o OUT.onnx [--ratio R]: lossless purification, or one-shot pruning."""

from __future__ import annotations

from acc.commands.options import add_input_shape, parse_input_shapes
from acc.format import human, ratio, table


def register(sub) -> None:
    p = sub.add_parser(
        "shrink",
        help="remove dead channels losslessly, or (with --ratio) a fraction of every group",
        description="Without --ratio: lossless purification (provably dead channels go, outputs stay equal). "
        "With --ratio R: remove the fraction R of every prunable group's channels, smallest norm first.",
    )
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="where to write the smaller ONNX model")
    p.add_argument("--ratio", type=float, default=None, help="fraction of channels to remove, in (0, 1)")
    p.add_argument("--criterion", choices=["l1", "l2"], default="l1", help="channel norm for --ratio (default l1)")
    p.add_argument("--report", default=None, metavar="FILE.json", help="write counts, widths and kept indices")
    add_input_shape(p)
    p.set_defaults(func=run)


def print_summary(result) -> None:
    b, a = result.before, result.after
    print(
        table(
            ["", "before", "after", "reduction"],
            [
                ["parameters", human(b.params), human(a.params), ratio(b.params, a.params)],
                ["non-zero parameters", human(b.nonzero_params), human(a.nonzero_params), ratio(b.nonzero_params, a.nonzero_params)],
                ["FLOPs (MACs)", human(b.flops), human(a.flops), ratio(b.flops, a.flops)],
            ],
            {1, 2, 3},
        )
    )
    changed = [r for r in result.group_rows() if r["width_after"] != r["width_before"]]
    worst = max((d.max_abs_error for d in result.diffs), default=0.0)
    if result.unchanged:
        print(result.unchanged)
        return
    print(f"{len(changed)} of {len(result.group_rows())} groups narrowed; verified in onnxruntime (max abs error {worst:.2g})")


def run(args) -> int:
    from acc import api

    result = api.shrink(
        args.model,
        output=args.output,
        ratio=args.ratio,
        criterion=args.criterion,
        report=args.report,
        input_shapes=parse_input_shapes(args.input_shape),
    )
    print_summary(result)
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0
