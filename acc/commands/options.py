"""Options shared by several subcommands."""

from __future__ import annotations

from acc.errors import InputError


def add_input_shape(parser) -> None:
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="fix an input's shape, e.g. input=1x3x32x32 (symbolic batch dims become 1 otherwise)",
    )


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
