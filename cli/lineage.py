"""``eve lineage``: trace a model version down to its raw data, or a dataset up to every model that used it.

    eve lineage eve@v0.2.0                          # readable tree down to the raw sources, full hashes
    eve lineage eve@v0.2.0 --format json|dot        # the manifest / Graphviz source
    eve lineage eve@v0.2.0 --format png|svg [-o F]  # a picture laid out by Graphviz
    eve lineage --dataset KEY [--format json]       # KEY: dataset hash (8+ chars), DVC md5, or tag
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lineage", help="lineage of a model version, or the models that used a dataset")
    parser.add_argument("model_ref", nargs="?", help="model version, e.g. eve@v0.2.0")
    parser.add_argument("--dataset", help="dataset hash (8+ characters), DVC md5 or tag: list the model versions that used it")
    parser.add_argument("--format", choices=["text", "json", "dot", "png", "svg"], default="text")
    parser.add_argument("-o", "--output", help="picture path (default lineage-<version>.<format>)")
    parser.set_defaults(func=run)


def _dataset_hash(key: str) -> str:
    """The content hash behind a dataset hash, DVC md5 or tag of the dataset registry (the key itself
    when the registry does not know it: a manifest may name data registered elsewhere)."""
    from tasks.data.versioning import DatasetNotFoundError, DatasetRegistry

    try:
        return DatasetRegistry.from_settings().find(key).dataset_hash
    except DatasetNotFoundError:
        return key


def run(args: argparse.Namespace) -> int:
    from tasks.lineage.render import GraphvizMissing, format_lineage_dot, format_lineage_text, render_lineage_image
    from tasks.lineage.store import find_models_using_dataset, read_lineage
    from tasks.platform import PlatformSettings

    registry_dir = PlatformSettings.load().registry_dir
    if bool(args.model_ref) == bool(args.dataset):
        print("eve lineage: give either a model version (eve@vX) or --dataset KEY", file=sys.stderr)
        return 2
    if args.dataset:
        if len(args.dataset) < 8:
            print("eve lineage: give at least 8 characters of the dataset hash, its DVC md5 or its tag", file=sys.stderr)
            return 2
        usages = find_models_using_dataset(registry_dir, _dataset_hash(args.dataset))
        if args.format == "json":
            print(json.dumps([u.model_dump() for u in usages], indent=2))
        elif not usages:
            print(f"eve lineage: no registered model version used dataset {args.dataset}", file=sys.stderr)
            return 1
        else:
            for usage in usages:
                print(f"{usage.model_ref}: {', '.join(usage.roles)}")
        return 0
    try:
        manifest = read_lineage(registry_dir, args.model_ref)
    except FileNotFoundError as error:
        print(f"eve lineage: {error}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(manifest.model_dump_json(indent=2))
    elif args.format == "dot":
        print(format_lineage_dot(manifest), end="")
    elif args.format in ("png", "svg"):
        try:
            print(render_lineage_image(manifest, args.output or f"lineage-{manifest.version}.{args.format}", args.format))
        except GraphvizMissing as error:
            print(f"eve lineage: {error}", file=sys.stderr)
            return 1
    else:
        print(format_lineage_text(manifest))
    return 0
