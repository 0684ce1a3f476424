"""``eve quality``: the caption and instruction-data gates from the command line.

    eve quality check DATASET [--profile short-labels] [--set max_filtered_fraction=0.1 ...]
    eve quality check DATASET --suite instructions          # the stage-3 conversation gate
    eve quality profiles                                    # every profile's thresholds

DATASET is a dataset directory (``manifest.json`` + shards) or a registered version (tag, dataset
hash, DVC md5 or a unique prefix of either). ``check`` runs the same gate as the retrain flow
(``tasks.quality.gate``), stores the same result under the platform home, writes the filtered
version where the flow would, and prints the same markdown report as the flow's Prefect artifact.
Exit status: 0 passed, 1 rejected, 2 bad arguments or an unreadable dataset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

USAGE_ERROR = 2
REJECTED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quality", help="run the caption / instruction-data quality gates")
    commands = parser.add_subparsers(dest="quality_command", metavar="ACTION", required=True)

    check = commands.add_parser("check", help="gate a dataset version and print the report")
    check.add_argument("dataset", help="dataset directory, or registered version: tag, dataset hash, DVC md5, prefix")
    check.add_argument("--suite", choices=("captions", "instructions"), default="captions",
                       help="captions (stages 1-2) or instructions (stage-3 conversations)")
    check.add_argument("--profile", choices=("teacher-captions", "short-labels"), default="teacher-captions",
                       help="caption profile: dense teacher descriptions or human short labels / alt-text")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                       help="override one threshold (repeatable), e.g. --set max_filtered_fraction=0.1; "
                            "`eve quality profiles` lists the names")
    check.add_argument("--output", default=None,
                       help="where a passing gate writes the filtered version (default: where the flow writes it)")
    check.add_argument("--json", action="store_true", help="print the GateResult as JSON instead of markdown")
    check.set_defaults(func=run_check)

    profiles = commands.add_parser("profiles", help="print every caption profile's thresholds")
    profiles.add_argument("--json", action="store_true", help="as JSON")
    profiles.set_defaults(func=show_profiles)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a=0.1", "b=null"]`` -> ``{"a": 0.1, "b": None}``: values read as YAML scalars."""
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, separator, raw = pair.partition("=")
        if not separator or not name.strip():
            raise ValueError(f"--set expects NAME=VALUE, got {pair!r}")
        overrides[name.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return overrides


def build_thresholds(suite: str, profile: str, overrides: dict[str, Any]):
    """The thresholds model for ``suite``; unknown names and bad values raise ``ValueError`` naming them."""
    from pydantic import ValidationError

    from tasks.quality.config import CaptionGateThresholds, InstructionGateThresholds

    model = CaptionGateThresholds if suite == "captions" else InstructionGateThresholds
    unknown = sorted(set(overrides) - set(model.model_fields) - {"profile"})
    if unknown:
        raise ValueError(f"unknown threshold(s) {unknown}; {model.__name__} has: {', '.join(model.model_fields)}")
    try:
        if suite == "captions":
            return CaptionGateThresholds(**{"profile": profile, **overrides})
        return InstructionGateThresholds(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'thresholds'}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise ValueError(problems) from None


def _resolve_dataset(key: str) -> Path:
    from eve_model.shards import read_manifest
    from tasks.data.versioning import DatasetRegistry

    path = Path(key)
    if (path / "manifest.json").is_file():
        read_manifest(path)  # a malformed manifest fails here, with its own message
        return path
    if path.exists():
        raise ValueError(f"{path} is not a dataset directory (no manifest.json)")
    return DatasetRegistry.from_settings().checkout(key)


def run_check(args: argparse.Namespace) -> int:
    from eve_model.shards import DatasetIntegrityError, read_manifest
    from tasks.data.steps import derived_dataset_dir
    from tasks.data.versioning import DatasetNotFoundError
    from tasks.quality.gate import gate_caption_dataset, gate_instruction_dataset
    from tasks.quality.report import render_markdown

    try:
        thresholds = build_thresholds(args.suite, args.profile, parse_overrides(args.overrides))
        location = _resolve_dataset(args.dataset)
        dataset_hash = read_manifest(location).dataset_hash
    except (ValueError, DatasetNotFoundError, DatasetIntegrityError) as exc:
        print(f"error: {exc}")
        return USAGE_ERROR
    kind = "filtered" if args.suite == "captions" else "sft-filtered"
    output = args.output or derived_dataset_dir(kind, dataset_hash, thresholds)
    gate = gate_caption_dataset if args.suite == "captions" else gate_instruction_dataset
    try:
        result = gate(location, output, thresholds)
    except DatasetIntegrityError as exc:
        print(f"error: {exc}")
        return USAGE_ERROR
    print(result.model_dump_json(indent=2) if args.json else render_markdown(result))
    return 0 if result.passed else REJECTED


def show_profiles(args: argparse.Namespace) -> int:
    from tasks.quality.config import CAPTION_PROFILE_DEFAULTS, CaptionGateThresholds

    if args.json:
        print(json.dumps(CAPTION_PROFILE_DEFAULTS, indent=2, sort_keys=True))
        return 0
    names = list(CAPTION_PROFILE_DEFAULTS)
    print(f"{'threshold':<30} " + " ".join(f"{name:>18}" for name in names))
    for field in CAPTION_PROFILE_DEFAULTS[names[0]]:
        print(f"{field:<30} " + " ".join(f"{str(CAPTION_PROFILE_DEFAULTS[n][field]):>18}" for n in names))
    print()
    for field, info in CaptionGateThresholds.model_fields.items():
        print(f"{field}: {' '.join((info.description or '').split())}")
    return 0
