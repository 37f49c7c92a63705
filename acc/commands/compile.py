"""acc compile MODEL.onnx --rate 30x --data DATA -o OUTDIR: the whole AutoCompress pipeline."""

from __future__ import annotations

from acc.commands.options import add_data_options, add_devices, add_purify_options, add_round_to, add_input_shape, add_layout, parse_input_shapes, spawned_ranks
from acc.commands.options import add_device, add_training_recipe


def register(sub) -> None:
    p = sub.add_parser(
        "compile",
        help="search, ADMM-prune, purify and rewrite to a target rate (and build with TVM)",
        description="Reach --rate fewer parameters (or FLOPs) in a few rounds: each round searches the per-layer "
        "rates by simulated annealing, prunes with ADMM, purifies, fine-tunes and rewrites a smaller, verified graph.",
    )
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--rate", required=True, help="reduction: 30x, 30, or 96.7%% (removed)")
    p.add_argument("--data", required=True, help="training data (packed folder/.npz, image folder, or arrays)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for model.onnx, report.json, report.md, plots")
    p.add_argument("--metric", choices=["params", "flops", "nonzero", "latency"], default="params",
                   help="what --rate counts: dense parameters (default), FLOPs, non-zero parameters "
                   "(the paper's count; the search then also chooses column pruning per layer), or latency "
                   "measured on --target (a per-layer table timed there, cached)")
    p.add_argument("--rounds", type=int, default=3, help="progressive rounds (default 3)")
    p.add_argument("--budget-epochs", type=int, default=4, help="training epochs per round, half ADMM half fine-tuning (default 4)")
    p.add_argument("--search-steps", type=int, default=None, help="annealing steps per round (default: 100 -> 20 at x0.9, 16 steps)")
    p.add_argument("--eval-images", type=int, default=512, help="validation images that score a search candidate")
    p.add_argument("--search-finetune-steps", type=int, default=50,
                   help="masked SGD steps before a candidate is scored (default 50; 0: one-shot + BatchNorm re-estimation only)")
    p.add_argument("--search-share", type=float, default=0.25, metavar="S",
                   help="the most of each round's compute the search may take: fine-tune steps (down to 20), then "
                   "search steps are cut to fit (default 0.25; 0: no cap)")
    p.add_argument("--search-starts", default=None, metavar="LIST",
                   help="start allocations scored, the lowest-energy one is where the annealing starts: uniform, "
                   "l1 (global L1, Torch-Pruning style), bn (global BatchNorm scale) (default uniform,l1,bn)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="score the search's candidates in parallel on Ray: a cluster started here, or the one at "
                   "ADDRESS (HOST:PORT, ray://HOST:PORT, auto); needs pip install 'acc[ray]'")
    p.add_argument("--candidates", type=int, default=None, metavar="K",
                   help="candidates per search step, scored as one batch (default 1; with --ray, the workers the cluster holds)")
    p.add_argument("--candidate-cpus", type=float, default=None, help="CPUs per Ray worker (default 1)")
    p.add_argument("--candidate-gpus", type=float, default=None, help="GPUs per Ray worker (default 0; 0.25 shares one GPU by four)")
    p.add_argument("--strategy", choices=["anneal", "uniform"], default="anneal",
                   help="anneal: search the per-layer rates (default); uniform: one rate for every group, the baseline")
    p.add_argument("--limit", type=int, default=None, help="train on a seeded random subset of this many images")
    p.add_argument("--test-limit", type=int, default=None, help="score the test split on this many images")
    p.add_argument("--target", default=None,
                   help="also build a TVM library for this target (host, arm64, rpi4, pixel, ...) and time the result "
                   "against the original there; 'onnxruntime': the ONNX model on this machine's onnxruntime, no library")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="MetaSchedule trials per task for --target (the result is tuned once, at the end; its new "
                   "tasks start from the schedules the database holds for the same ops at other widths)")
    p.add_argument("--tune-db", default=None, metavar="DIR",
                   help="MetaSchedule database root (default ~/.cache/acc/tune); given with no --tune-trials, the "
                   "result's tasks still get the schedules tuned for the original (acc build --tune-trials N)")
    add_device(p)
    sup = p.add_mutually_exclusive_group()
    sup.add_argument("--labels", dest="labels", action="store_true", default=None, help="train on labels (default when present)")
    sup.add_argument("--distill", dest="labels", action="store_false", help="learn the original model's outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the training (default: 0.01 x rate / 2, from 0.01 at 2x to 0.04 at 8x and beyond)")
    p.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda, cuda:N)")
    add_devices(p)
    p.add_argument("--resume", action="store_true", help="continue a killed run in OUTDIR")
    p.add_argument("--no-progress", action="store_true")
    add_training_recipe(p)
    add_data_options(p)
    add_purify_options(p)
    add_round_to(p, None, "1; with --metric latency 8, the widths its table times")
    add_input_shape(p)
    add_layout(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from acc import api
    from acc.report import summary_table

    code = spawned_ranks(args)
    if code is not None:
        return code
    result = api.compile(
        args.model, rate=args.rate, data=args.data, output=args.output, metric=args.metric, rounds=args.rounds,
        budget_epochs=args.budget_epochs, search_steps=args.search_steps, eval_images=args.eval_images,
        search_finetune_steps=args.search_finetune_steps, search_share=args.search_share, search_starts=args.search_starts, strategy=args.strategy,
        limit=args.limit, test_limit=args.test_limit, target=args.target, tune_trials=args.tune_trials,
        labels=args.labels, seed=args.seed, device=args.device, resume=args.resume, progress=not args.no_progress,
        workers=args.workers, cache_mb=args.cache_mb, augment=args.augment,
        purify=args.purify, purify_tolerance=args.purify_tolerance, round_to=args.round_to,
        ray=args.ray, candidates=args.candidates, candidate_cpus=args.candidate_cpus, candidate_gpus=args.candidate_gpus,
        input_shapes=parse_input_shapes(args.input_shape), layout=args.layout,
        distill_weight=args.distill_weight, temperature=args.temperature,
        feature_distill=args.feature_distill, admm=args.admm,
        rpc=args.rpc, tracker=args.tracker, key=args.key, tune_db=args.tune_db, recover_cut=args.recover_cut,
        keep_best=args.keep_best, lr=args.lr,
    )
    if not result.report:  # a rank other than 0: rank 0 reports
        return 0
    print(summary_table(result.report))
    from acc.report import search_cost_line

    if search_cost_line(result.report):
        print(search_cost_line(result.report))
    from acc.prune.purify import summary_line

    for k, detail in enumerate(result.report.get("rounds_detail", []), start=1):
        line = summary_line(detail)
        if line:
            print(f"round {k}: {line}")
    from acc.report import input_line

    if input_line(result.report.get("input")):
        print(input_line(result.report["input"]))
    from acc.report import latency_line

    if latency_line(result.report.get("latency")):
        print(latency_line(result.report["latency"]))
    print(f"wrote {result.model_path}, {result.out_dir / 'report.json'}, {result.out_dir / 'report.md'}"
          + (f", {result.library}" if result.library else ""))
    return 0
