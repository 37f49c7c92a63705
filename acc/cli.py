"""The `acc` command line. Each subcommand lives in acc/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import sys

from acc import __version__
from acc.commands import COMMAND_MODULES
from acc.errors import AccError


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 on usage errors already; keep its message on one line.
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="acc", description="AutoCompress compiler: structured pruning of ONNX CNNs, compiled with TVM.")
    parser.add_argument("--version", action="version", version=f"acc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"acc.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --devices starts the ranks with it
    try:
        code = args.func(args)
    except AccError as err:
        print(f"acc {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"acc {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
