"""``eve convert``: bring checkpoints from elsewhere into this library's format.

    eve convert upstream SRC DST [--preset eve_7b|eve_7b_hd] [--set KEY=VALUE ...]

``upstream`` converts a released EVE v1 checkpoint (BAAI's EVE-7B / EVE-7B-HD directory) into a model
directory of this library: every upstream tensor mapped exactly once or dropped for a stated reason,
weights copied bit for bit, the source files' sha256 in the model card (``eve_model.convert_upstream``).
Exit codes: 0 converted, 2 the source cannot be converted (the reason in one line; nothing written).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert checkpoints from elsewhere (upstream EVE releases)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    upstream = kinds.add_parser("upstream", help="a released EVE v1 checkpoint (baaivision/EVE) -> this library")
    from eve_model.convert_upstream import add_arguments

    add_arguments(upstream)
    upstream.set_defaults(func=_upstream)


def _upstream(args: argparse.Namespace) -> int:
    from eve_model.convert_upstream import run

    return run(args)
