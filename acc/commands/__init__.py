"""One module per CLI subcommand; each exposes `register(subparsers)` and sets `func` on its parser."""

# Order is the order shown by `acc --help`.
COMMAND_MODULES = [
    "analyze",
    "shrink",
    "prune",
    "compile",
    "build",
    "bench",
    "device",
    "demo",
]
