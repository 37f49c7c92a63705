"""acc prune MODEL.onnx --data DATA (--rates RATES.json | --uniform R) -o OUT.onnx: ADMM pruning."""

from __future__ import annotations

from acc.commands.options import add_device, add_data_options, add_devices, add_purify_options, add_round_to, add_input_shape, add_layout, parse_input_shapes, spawned_ranks
from acc.commands.options import add_training_recipe


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="ADMM structured pruning with given per-layer rates, purification, fine-tuning, rewrite",
        description="ADMM -> hard prune -> rewrite -> fine-tuning of the smaller model -> purification -> physically smaller, verified ONNX.",
    )
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--data", required=True, help="training data: packed .npz (or a folder with train.jpeg.npz), image folder, or .npz/.npy arrays")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned ONNX model")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rates", metavar="RATES.json", help='per-layer rates: {"groups": {name: rate}, "columns": {layer: rate}}')
    how.add_argument("--uniform", type=float, metavar="R", help="remove the fraction R of every prunable layer")
    p.add_argument("--scheme", choices=["filter", "column", "mixed"], default="filter", help="scheme for --uniform (default filter)")
    sup = p.add_mutually_exclusive_group()
    sup.add_argument("--labels", dest="labels", action="store_true", default=None, help="train on the data's labels (default when it has them)")
    sup.add_argument("--distill", dest="labels", action="store_false", help="learn the original model's outputs instead of labels")
    p.add_argument("--epochs", type=int, default=4, help="ADMM epochs (default 4)")
    p.add_argument("--admm-iters", type=int, default=4, help="Z/U updates over the ADMM epochs (default 4)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="masked fine-tuning epochs (default: --epochs)")
    p.add_argument("--lr", type=float, default=0.01, help="ADMM learning rate (default 0.01)")
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tuning learning rate (default: --lr)")
    p.add_argument("--finetune-masked", action="store_true",
                   help="fine-tune the masked full-width model instead of the physically smaller one (same result, slower; for comparison)")
    p.add_argument("--rho", default="auto", help="initial ADMM penalty, or 'auto' to scale it to the number of ADMM steps (default auto)")
    p.add_argument("--rho-mult", type=float, default=2.0, help="rho multiplier per Z/U update (default 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="train on a seeded random subset of this many images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="FILE.json", help="write the full report")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint file (default: OUTPUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_training_recipe(p)
    add_data_options(p)
    add_purify_options(p)
    add_round_to(p)
    add_input_shape(p)
    add_layout(p)
    p.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda, cuda:N)")
    add_devices(p)
    p.add_argument("--target", default=None,
                   help="time the result against the original on this target (host, arm64, ... with --rpc or "
                   "--tracker/--key; onnxruntime: this machine's onnxruntime): the report's latency section")
    add_device(p)
    p.set_defaults(func=run)


def print_summary(report: dict) -> None:
    from acc.report import summary_table

    print(summary_table(report))
    data = report.get("data", {})
    how = {"memory": "in memory", "stream": f"streamed by {data.get('workers')} workers"}.get(data.get("path"), "")
    print(f"{report['objective']}; {report['train_images']} training images" + (f" ({how}, {data['augment']} augmentation)" if how else "")
          + f"; {report['seconds']:.0f} s")
    from acc.prune.purify import summary_line

    line = summary_line(report)
    if line:
        print(line)
    from acc.report import input_line

    line = input_line(report.get("input"))
    if line:
        print(line)
    from acc.report import latency_line

    line = latency_line(report.get("latency"))
    if line:
        print(line)


def run(args) -> int:
    from acc import api

    code = spawned_ranks(args)
    if code is not None:
        return code
    result = api.prune(
        args.model, args.data, output=args.output, rates=args.rates, uniform=args.uniform, scheme=args.scheme,
        labels=args.labels, epochs=args.epochs, admm_iters=args.admm_iters, finetune_epochs=args.finetune_epochs,
        lr=args.lr, finetune_lr=args.finetune_lr, rho=args.rho, rho_mult=args.rho_mult, batch_size=args.batch_size,
        limit=args.limit, seed=args.seed, report=args.report, checkpoint=args.checkpoint, resume=args.resume,
        progress=not args.no_progress, device=args.device, workers=args.workers, cache_mb=args.cache_mb,
        augment=args.augment, input_shapes=parse_input_shapes(args.input_shape), layout=args.layout,
        purify=args.purify, purify_tolerance=args.purify_tolerance,
        distill_weight=args.distill_weight, temperature=args.temperature,
        feature_distill=args.feature_distill, admm=args.admm, round_to=args.round_to,
        finetune_small=not args.finetune_masked, target=args.target, rpc=args.rpc, tracker=args.tracker, key=args.key,
        recover_cut=args.recover_cut, keep_best=args.keep_best,
    )
    if result.report is None:  # a rank other than 0: rank 0 reports
        return 0
    print_summary(result.report)
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0
