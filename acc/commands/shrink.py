"""acc shrink MODEL.onnx -o OUT.onnx [--ratio R | --rate R --data D]: lossless purification, one-shot
pruning, or post-training compression (searched rates, least-squares refit, BatchNorm re-estimation)."""

from __future__ import annotations

from acc.commands.options import add_input_shape, add_round_to, parse_input_shapes
from acc.format import human, ratio, table


def register(sub) -> None:
    p = sub.add_parser(
        "shrink",
        help="remove dead channels losslessly, a fraction of every group (--ratio), or reach a rate with no training (--rate --data)",
        description="Without --ratio or --rate: lossless purification (provably dead channels go, outputs stay equal). "
        "With --ratio R: remove the fraction R of every prunable group's channels, smallest norm first "
        "(with --round-to K each group keeps a multiple of K channels, the nearest to what R keeps). "
        "With --rate R --data D: R times fewer parameters (or FLOPs) with no training: per-group rates searched "
        "with a zero-training energy, then every layer reading pruned channels refitted by least squares to "
        "reproduce the original's feature maps, and BatchNorm re-estimated, from a few hundred calibration "
        "images of D (labels optional, unused; they give accuracy in the report).",
    )
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="where to write the smaller ONNX model")
    p.add_argument("--ratio", type=float, default=None, help="fraction of channels to remove, in (0, 1)")
    p.add_argument("--rate", default=None, help="post-training: reduction to reach, e.g. 2x, 3 or 50%% (removed); needs --data")
    p.add_argument("--metric", choices=["params", "flops"], default="params", help="what --rate counts (default params)")
    p.add_argument("--data", default=None, help="with --rate: calibration images (a dataset folder or file, as acc prune reads)")
    p.add_argument("--calibration-images", type=int, default=512, metavar="N",
                   help="with --rate: images drawn from --data (default 512; one in eight held out for the report)")
    p.add_argument("--seed", type=int, default=0, help="with --rate: seed of the calibration sample and the search")
    p.add_argument("--test-images", type=int, default=None, metavar="N",
                   help="with --rate: score accuracy on N images of the data's test split, when it has one "
                   "(default all, 0 none)")
    p.add_argument("--criterion", choices=["l1", "l2"], default="l1", help="channel norm for --ratio (default l1)")
    p.add_argument("--report", default=None, metavar="FILE.json", help="write counts, widths and kept indices")
    p.add_argument("--prune-embedding", action="store_true",
                   help="with --ratio: also narrow a transformer's residual stream (LayerNorm-coupled width)")
    add_round_to(p)  # read with --ratio only
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

    rate = None
    if args.rate is not None:
        from acc.autocompress import parse_rate

        rate = parse_rate(args.rate)
    result = api.shrink(
        args.model,
        output=args.output,
        ratio=args.ratio,
        criterion=args.criterion,
        report=args.report,
        input_shapes=parse_input_shapes(args.input_shape),
        prune_embedding=args.prune_embedding,
        rate=rate,
        data=args.data,
        metric=args.metric,
        calibration_images=args.calibration_images,
        seed=args.seed,
        test_images=args.test_images,
        round_to=args.round_to,
        log=print if rate is not None else None,  # minutes of work: say what it is doing
    )
    print_summary(result)
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0
