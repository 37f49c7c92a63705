"""Options shared by several subcommands."""

from __future__ import annotations

from acc.errors import InputError


def add_input_shape(parser) -> None:
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="fix an input's shape, e.g. input=1x3x32x32 (otherwise a free batch dim becomes 1; for prune and "
        "compile, a free height and width the preprocessing size)",
    )


def add_layout(parser) -> None:
    parser.add_argument("--layout", choices=["NCHW", "NHWC"], default=None,
                        help="the image input's layout (default: MODEL.preprocess.json's \"layout\", else read from the "
                        "input's shape, e.g. 1x224x224x3 is NHWC, else NCHW)")


def parse_input_shapes(values: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise InputError(f"--input-shape takes NAME=DIMS like input=1x3x32x32, got '{value}'") from None
    return shapes


def add_data_options(parser) -> None:
    """How training data is read and augmented (acc prune, acc compile)."""
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="data loader processes that decode and augment (default: min(4, CPUs - 1))")
    parser.add_argument("--cache-mb", type=float, default=1024.0, metavar="MB",
                        help="decode the data into memory when it fits in MB (default 1024), else stream it")
    parser.add_argument("--augment", choices=["cifar", "imagenet", "resize", "none"], default=None,
                        help="augmentation preset (default: MODEL.preprocess.json's, else resize for data without labels, "
                        "else cifar up to 64 px, imagenet above)")


def add_purify_options(parser) -> None:
    """Near-zero purification after fine-tuning (acc prune, acc compile)."""
    parser.add_argument("--purify-tolerance", type=float, default=1e-3, metavar="T",
                        help="near-zero purification keeps a removal while the validation loss rises by at most this "
                        "fraction (default 0.001 = 0.1%%)")
    parser.add_argument("--no-purify", dest="purify", action="store_false",
                        help="no near-zero purification: only the requested rates, and channels provably dead")


def add_round_to(parser, default: int | None = 1, default_text: str = "1") -> None:
    """Kept channel counts in multiples of K (acc prune, acc compile, acc shrink --ratio)."""
    parser.add_argument("--round-to", type=int, default=default, metavar="K",
                        help="keep a multiple of K channels in every pruned group (fast kernels work in blocks of 4, 8, "
                        f"16 channels on NEON/GPU); groups no wider than K stay whole (default {default_text})")


def add_devices(parser) -> None:
    parser.add_argument(
        "--devices",
        default=None,
        metavar="DEV,DEV,...",
        help="train on these devices, one process each (e.g. cuda:0,cuda:1; cpu,cpu for gloo on the CPU); "
        "a single device just sets the device. Under torchrun, leave it out.",
    )


def spawned_ranks(args) -> int | None:
    """With --devices naming several devices, run this command as that many ranks and return the
    exit code; None when this process is to do the work itself (its device set in args.device)."""
    if not getattr(args, "devices", None):
        return None
    from acc.prune import launch

    devices = launch.parse_devices(args.devices)
    if len(devices) == 1:
        args.device = devices[0]
        return None
    return launch.spawn(args.argv, devices)


def add_training_recipe(parser) -> None:
    from acc.prune.posttrain import CUT_RECOVERY_IMAGES

    """The objective and ADMM policy (acc prune, acc compile)."""
    parser.add_argument("--distill-weight", type=float, default=None, metavar="A",
                        help="with labels, train on (1 - A) x cross-entropy + A x distillation from the original model "
                        "(0 = labels only, 1 = distillation only; default 0.9)")
    parser.add_argument("--temperature", type=float, default=None, metavar="T",
                        help="temperature of the distillation's softened outputs (default 4)")
    parser.add_argument("--feature-distill", type=float, default=None, metavar="W",
                        help="while the physically smaller model fine-tunes, also learn the original's inputs to each "
                        "of its convolutions (their kept channels), with weight W (default 0: off)")
    parser.add_argument("--admm", choices=["auto", "on", "off"], default="auto",
                        help="auto: ADMM where the budget lets it pay, else one-shot pruning + fine-tuning with all the "
                        "epochs (default); on: always ADMM; off: always one-shot")
    parser.add_argument("--recover-cut", type=int, default=CUT_RECOVERY_IMAGES, metavar="N",
                        help="right after the hard prune, refit the cut layers by least squares on N training images and "
                        f"re-estimate BatchNorm, before fine-tuning (default {CUT_RECOVERY_IMAGES}; 0: fine-tune the cut as it is)")
    parser.add_argument("--last-epoch", dest="keep_best", action="store_false",
                        help="end fine-tuning on its last epoch (default: on the state with the lowest validation loss "
                        "among the recovered cut and the epochs)")


def add_device(parser) -> None:
    """The device a --target runs on: an RPC server, or a tracker and a key (host targets need neither)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rpc", metavar="HOST:PORT", help="the TVM RPC server of the --target device")
    where.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker with the --target device (with --key)")
    parser.add_argument("--key", help="the device key at the tracker")
