"""``eve data``: the data pipeline from the command line.

    eve data demo [--generate-only] [--embedder thumbnail]   # demo source -> validated, curated, versioned
    eve data ingest --location s3://bucket/raw [--kind webdataset] --name laion-part1 [--paper]
    eve data versions [--name NAME]                         # registered dataset versions
    eve data pull KEY DEST                                  # a version back from the DVC remote (clean clone)
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="ingest, validate, curate and version datasets (DVC)")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    demo = commands.add_parser("demo", help="regenerate/verify data/ against data.dvc and run the data flow on it")
    demo.add_argument("--generate-only", action="store_true", help="only (re)generate and verify data/demo")
    demo.add_argument("--embedder", choices=("teacher", "thumbnail"), default="teacher", help="curation embedding")
    demo.set_defaults(func=run_demo)

    ingest = commands.add_parser("ingest", help="run the data flow on one source")
    ingest.add_argument("--location", required=True, help="local path or s3:// URL")
    ingest.add_argument("--kind", choices=("image_folder", "webdataset", "parquet"), default="image_folder")
    ingest.add_argument("--records-file", default="captions.jsonl", help="image_folder: JSONL or CSV records file")
    ingest.add_argument("--name", required=True, help="dataset name (versions: NAME-raw, NAME-curated)")
    ingest.add_argument("--paper", action="store_true", help="paper rules: >448 px, 50k clusters x 300")
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


def _summarise(result) -> None:
    ingest = result.ingest
    print(f"ingest: {ingest.num_in} in = {ingest.num_accepted} accepted + {ingest.num_quarantined} quarantined "
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
    if args.generate_only:
        return 0
    from flows.data_flow import DataFlowParams, data_pipeline

    _use_prefect_server()
    params = DataFlowParams.demo()
    params.curation.embedder = args.embedder
    _summarise(data_pipeline(params))
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    from flows.data_flow import DataFlowParams, data_pipeline
    from tasks.data.sources import SourceError, SourceSpec, check_source
    from tasks.data.steps import NothingAcceptedError

    source = SourceSpec(kind=args.kind, location=args.location, records_file=args.records_file)
    try:
        check_source(source)  # a location that is not there: one line, before any service starts
    except SourceError as exc:
        print(f"error: {exc}")
        return 2
    _use_prefect_server()
    if args.paper:
        params = DataFlowParams.paper(args.name, [source])
    else:
        params = DataFlowParams(dataset_name=args.name, use_demo_source=False, sources=[source])
    params.curate = not args.no_curate
    try:
        _summarise(data_pipeline(params))
    except (SourceError, NothingAcceptedError) as exc:
        print(f"error: {exc}")
        return 1
    return 0


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
