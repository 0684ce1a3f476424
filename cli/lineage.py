"""``eve lineage``: trace a model version down to its raw data, or a dataset up to every model that used it.

eve lineage eve@v0.2.0                         # text chain down to the raw source hashes
eve lineage eve@v0.2.0 --format json|dot
eve lineage eve@v0.2.0 --format png -o lineage.png
eve lineage --dataset <sha256 or 8+ char prefix> [--format json]
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lineage", help="lineage of a model version, or the models that used a dataset")
    parser.add_argument("model_ref", nargs="?", help="model version, e.g. eve@v0.2.0")
    parser.add_argument("--dataset", help="dataset hash: list every model version that used it")
    parser.add_argument("--format", choices=["text", "json", "dot", "png"], default="text")
    parser.add_argument("-o", "--output", help="PNG path (default lineage-<version>.png)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tasks.lineage.render import format_lineage_dot, format_lineage_text, render_lineage_png
    from tasks.lineage.store import find_models_using_dataset, read_lineage
    from tasks.platform import PlatformSettings

    registry_dir = PlatformSettings.load().registry_dir
    if bool(args.model_ref) == bool(args.dataset):
        print("give either a model version (eve@vX) or --dataset HASH", file=sys.stderr)
        return 2
    if args.dataset:
        usages = find_models_using_dataset(registry_dir, args.dataset)
        if args.format == "json":
            print(json.dumps([u.model_dump() for u in usages], indent=2))
        elif not usages:
            print(f"no registered model version used dataset {args.dataset}")
        else:
            for usage in usages:
                print(f"{usage.model_ref}: {', '.join(usage.roles)}")
        return 0
    try:
        manifest = read_lineage(registry_dir, args.model_ref)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    if args.format == "json":
        print(manifest.model_dump_json(indent=2))
    elif args.format == "dot":
        print(format_lineage_dot(manifest), end="")
    elif args.format == "png":
        output = render_lineage_png(manifest, args.output or f"lineage-{manifest.version}.png")
        print(output)
    else:
        print(format_lineage_text(manifest))
    return 0
