"""``eve data``: the data pipeline from the command line.

    eve data demo [--generate-only] [--embedder thumbnail]   # demo source -> validated, curated, versioned
    eve data ingest --location s3://bucket/raw --name laion-part1 [--paper]   # layout recognised
    eve data ingest --location ./photos --name photos --caption-field alt_text --min-side 32
    eve data versions [--name NAME]                         # registered dataset versions
    eve data pull KEY DEST                                  # a version back from the DVC remote (clean clone)
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="ingest, validate, curate and version datasets (DVC)")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    demo = commands.add_parser("demo", help="regenerate/verify data/ against data.dvc, push it to the DVC remote, run the data flow on it")
    demo.add_argument("--generate-only", action="store_true", help="only (re)generate and verify data/demo")
    demo.add_argument("--embedder", choices=("teacher", "thumbnail"), default="teacher", help="curation embedding")
    demo.set_defaults(func=run_demo)

    ingest = commands.add_parser(
        "ingest", help="run the data flow on one source (production rules; the layout is recognised)",
        description="Validate, shard, curate and register one source. New raw versions are announced to the "
                    "retrain-on-new-data deployment. Rules: production defaults for your own data (docs/own-data.md).")
    ingest.add_argument("--location", required=True, help="folder, file or s3:// URL")
    ingest.add_argument("--kind", choices=("auto", "image_folder", "webdataset", "parquet"), default="auto",
                        help="layout (auto: Hugging Face image folder, captions.jsonl folder, LLaVA JSON, WebDataset, Parquet)")
    ingest.add_argument("--records-file", default=None, help="image folder: the JSONL, CSV or JSON-list records file")
    ingest.add_argument("--image-field", default=None, help="record field / column naming the image (default: the layout's)")
    ingest.add_argument("--caption-field", default=None, help="record field / column holding the caption (default: the layout's)")
    ingest.add_argument("--id-field", default=None, help="record field / column with an item id")
    ingest.add_argument("--name", required=True, help="dataset name (versions: NAME-raw, NAME-curated)")
    ingest.add_argument("--paper", action="store_true", help="paper rules: >448 px, 50k clusters x 300")
    ingest.add_argument("--min-side", type=int, metavar="PX", help="validation: smallest accepted width and height")
    ingest.add_argument("--max-aspect-ratio", type=float, help="validation: largest accepted aspect ratio")
    ingest.add_argument("--curation-target", type=int, metavar="N", help="curation: images to keep (diversity sampling)")
    ingest.add_argument("--no-curate", action="store_true", help="register the validated shards only")
    ingest.set_defaults(func=run_ingest)

    versions = commands.add_parser("versions", help="list registered dataset versions")
    versions.add_argument("--name", default=None, help="only versions of this dataset")
    versions.add_argument("--json", action="store_true", help="one JSON record per line")
    versions.set_defaults(func=list_versions)

    pull = commands.add_parser("pull", help="fetch a version from the DVC remote through a clean clone")
    pull.add_argument("key", help="dataset_hash, DVC md5, unique prefix of either, or tag")
    pull.add_argument("destination", help="new directory to write the dataset into")
    pull.set_defaults(func=pull_version)


def _summarise(result, rules: list[str] | None = None) -> None:
    for line in rules or []:
        print(f"   rule: {line}")
    for label, ingest in (("ingest", result.ingest), ("sft ingest", result.sft_ingest)):
        if ingest is not None:
            print(f"{label}: {ingest.num_in} in = {ingest.num_accepted} accepted + {ingest.num_quarantined} quarantined "
                  f"{ingest.quarantined_by_reason} (list: {ingest.quarantine_path})")
    if result.curation is not None:
        curation = result.curation
        print(f"curation ({curation.embedder}): {curation.num_in} in = {curation.num_kept} kept + "
              f"{sum(curation.dropped_by_reason.values())} dropped {curation.dropped_by_reason}")
        print("   rules: " + "; ".join(curation.rules_in_force))
    for label, version in (("raw", result.raw_version), ("captions", result.caption_version), ("sft", result.sft_version)):
        if version is not None:
            print(f"{label:>8}: {version.tag}  dataset_hash={version.dataset_hash}  dvc={version.dvc_md5}  items={version.num_items}")
    if result.eval_questions_path:
        print(f"    eval: {result.eval_questions_path}")


def _use_prefect_server() -> None:
    """PREFECT_API_URL if set, else the platform's local server (started once, then reused)."""
    from tasks.orchestration import ensure_prefect_server

    print(f"prefect: {ensure_prefect_server()}")


def run_demo(args: argparse.Namespace) -> int:
    from tasks.data.demo_source import DemoDataMismatchError, ensure_demo_data

    try:
        demo_dir = ensure_demo_data()
    except DemoDataMismatchError as exc:
        print(f"error: {exc}")
        return 1
    print(f"demo source ok: {demo_dir} matches data.dvc")
    from tasks.data.demo_source import publish_demo_data

    print(f"data.dvc pushed to {publish_demo_data()} (the checkout's DVC remote now: `dvc pull` works here)")
    if args.generate_only:
        return 0
    from flows.data_flow import DataFlowParams, data_pipeline

    _use_prefect_server()
    params = DataFlowParams.demo()
    params.curation.embedder = args.embedder
    _summarise(data_pipeline(params), params.validation.rules_in_force())
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.data_flow import DataFlowParams, data_pipeline
    from tasks.data.sources import SourceError, SourceSpec, check_source
    from tasks.data.steps import NothingAcceptedError, ingest_rules_in_force

    try:
        source = SourceSpec(kind=args.kind, location=args.location, records_file=args.records_file,
                            image_field=args.image_field, caption_field=args.caption_field, id_field=args.id_field)
        check_source(source)  # not there, or no known layout: one line, before any service starts
        params = _ingest_params(args, source)
    except (SourceError, ValidationError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    _use_prefect_server()
    try:
        _summarise(data_pipeline(params), ingest_rules_in_force([source], params.validation))
    except (SourceError, NothingAcceptedError) as exc:
        print(f"error: {exc}")
        return 1
    return 0


def _ingest_params(args: argparse.Namespace, source):
    """The data flow's parameters for one source: production (or the paper's) rules, the flags applied."""
    from flows.data_flow import DataFlowParams

    params = DataFlowParams.paper(args.name, [source]) if args.paper else DataFlowParams(dataset_name=args.name, sources=[source])
    validation = params.validation.model_copy(update={
        key: value for key, value in (("min_width_pixels", args.min_side), ("min_height_pixels", args.min_side),
                                      ("max_aspect_ratio", args.max_aspect_ratio)) if value is not None})
    curation = params.curation.model_copy(
        update={"target_num_items": args.curation_target} if args.curation_target is not None else {})
    # validated again as a whole: a flag value out of range is refused naming its field
    return DataFlowParams.model_validate({**params.model_dump(), "validation": validation.model_dump(),
                                          "curation": curation.model_dump(), "curate": not args.no_curate})


def list_versions(args: argparse.Namespace) -> int:
    from tasks.data.versioning import DatasetRegistry

    for version in DatasetRegistry.from_settings().list_versions(args.name):
        if args.json:
            print(json.dumps(version.model_dump(), sort_keys=True))
        else:
            print(f"{version.tag:<48} {version.dvc_md5:<40} items={version.num_items:<8} {version.remote_url}")
    return 0


def pull_version(args: argparse.Namespace) -> int:
    from tasks.data.versioning import DatasetNotFoundError, DatasetRegistry

    try:
        path = DatasetRegistry.from_settings().pull_version(args.key, args.destination)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}")
        return 1
    print(path)
    return 0
